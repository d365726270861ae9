from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def seal(key, nonce, data):
    return AESGCM(key).encrypt(nonce, data, None)
