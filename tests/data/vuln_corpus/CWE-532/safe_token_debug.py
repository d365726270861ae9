import logging


class ApiSession:
    def __init__(self, token):
        self.token = token
        logging.debug("new session, token of %d characters", len(self.token))
