import os

from cryptography.fernet import Fernet

cipher = Fernet(os.environ["FERNET_KEY"].encode())


def seal(data: bytes) -> bytes:
    return cipher.encrypt(data)
