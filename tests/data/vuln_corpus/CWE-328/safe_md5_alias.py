from hashlib import sha256 as digest


def file_signature(blob: bytes) -> str:
    return digest(blob).hexdigest()
