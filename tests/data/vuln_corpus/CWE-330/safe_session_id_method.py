import secrets


class SessionStore:
    def new_session_id(self):
        return secrets.token_hex(16)
