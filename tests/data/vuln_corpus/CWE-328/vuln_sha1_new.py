import hashlib


def etag_for(body: bytes) -> str:
    h = hashlib.new("sha1")
    h.update(body)
    return h.hexdigest()
