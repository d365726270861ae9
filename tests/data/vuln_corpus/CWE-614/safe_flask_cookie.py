from flask import Flask, make_response

app = Flask(__name__)


@app.post("/session")
def start():
    resp = make_response("welcome")
    resp.set_cookie("sid", "abc", httponly=True, secure=True, samesite="Lax")
    return resp
