import jwt

SIGNING_KEY = "my-very-own-signing-key"


def issue(user_id):
    return jwt.encode({"sub": user_id}, SIGNING_KEY, algorithm="HS256")
