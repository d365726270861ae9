from Crypto.Cipher import Blowfish


def seal(key, data):
    return Blowfish.new(key, Blowfish.MODE_CBC).encrypt(data)
