import os

from Crypto.Cipher import AES


def new_cipher():
    key = os.urandom(16)
    return AES.new(key, AES.MODE_GCM)
