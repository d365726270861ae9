import requests


def make_session():
    s = requests.Session()
    s.verify = False
    return s
