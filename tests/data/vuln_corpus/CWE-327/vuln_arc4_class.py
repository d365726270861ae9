from cryptography.hazmat.primitives.ciphers import Cipher, algorithms


class StreamSealer:
    def __init__(self, key):
        self.cipher = Cipher(algorithms.ARC4(key), mode=None)

    def seal(self, data):
        return self.cipher.encryptor().update(data)
