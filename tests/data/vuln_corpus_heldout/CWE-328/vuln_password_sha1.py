import hashlib


def hash_password(password, salt):
    return hashlib.sha1(salt + password.encode()).hexdigest()
