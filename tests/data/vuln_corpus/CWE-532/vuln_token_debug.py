import logging


class ApiSession:
    def __init__(self, token):
        self.token = token
        logging.debug(f"new session with bearer token {self.token}")
