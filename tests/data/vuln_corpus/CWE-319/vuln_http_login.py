import requests


def sign_in(user, password):
    return requests.post("http://accounts.example.com/api/login", data={"user": user, "password": password},
                         timeout=10)
