import jwt


def claims(token, key):
    return jwt.decode(token, key, algorithms=["HS256"], options={"verify_signature": False, "verify_exp": True})
