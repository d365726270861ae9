import os

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305


class StreamSealer:
    def __init__(self, key):
        self.aead = ChaCha20Poly1305(key)

    def seal(self, data):
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, data, None)
