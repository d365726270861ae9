import os


def create_lock(path):
    return os.open(path, os.O_CREAT | os.O_WRONLY, 0o777)
