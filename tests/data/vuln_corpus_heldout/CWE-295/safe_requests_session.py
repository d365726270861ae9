import requests


def make_session():
    s = requests.Session()
    s.verify = "/etc/ssl/certs/internal-ca.pem"
    return s
