import os

import jwt


class TokenReader:
    key = os.environ["JWT_KEY"]

    def read(self, token):
        return jwt.decode(token, self.key, algorithms=["HS256", "none"])
