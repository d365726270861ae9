from secrets import token_bytes as rb


def make_nonce():
    nonce = rb(12)
    return nonce
