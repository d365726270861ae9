from Crypto.Cipher import AES


def encrypt_block(key16, data):
    cipher = AES.new(key16, AES.MODE_GCM)
    return cipher.nonce, cipher.encrypt_and_digest(data)
