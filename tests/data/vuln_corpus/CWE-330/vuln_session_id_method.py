import random


class SessionStore:
    def new_session_id(self):
        return "%032x" % random.getrandbits(128)
