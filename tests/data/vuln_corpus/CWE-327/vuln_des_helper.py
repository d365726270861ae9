from Crypto.Cipher import DES


def encrypt_block(key8, data):
    return DES.new(key8, DES.MODE_CBC).encrypt(data)
