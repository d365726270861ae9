from hashlib import md5 as digest


def file_signature(blob: bytes) -> str:
    return digest(blob).hexdigest()
