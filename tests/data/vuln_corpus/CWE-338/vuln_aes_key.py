import random

from Crypto.Cipher import AES


def new_cipher():
    key = bytes(random.randrange(256) for _ in range(16))
    return AES.new(key, AES.MODE_GCM)
