from flask import Flask, request

app = Flask(__name__)


class Profile:
    pass


@app.post("/profile")
def save():
    p = Profile()
    p.__dict__.update(request.form)
    return "ok"
