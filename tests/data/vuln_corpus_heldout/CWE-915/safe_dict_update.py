from flask import Flask, request

app = Flask(__name__)


class Profile:
    pass


@app.post("/profile")
def save():
    p = Profile()
    p.nickname = request.form.get("nickname", "")
    return "ok"
