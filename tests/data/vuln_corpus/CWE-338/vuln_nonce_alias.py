from random import randbytes as rb


def make_nonce():
    nonce = rb(12)
    return nonce
