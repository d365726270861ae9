from cryptography.fernet import Fernet

cipher = Fernet(b"q5m0y8W0ZxkYl6d0W3hQkq0cX0yq2c0Yb3R0Y2VjcmV0a2V5PQ==")


def seal(data: bytes) -> bytes:
    return cipher.encrypt(data)
