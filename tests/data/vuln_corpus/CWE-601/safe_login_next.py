from urllib.parse import urlparse

from flask import Flask, redirect, request, session

app = Flask(__name__)


@app.post("/login")
def login():
    session["user"] = request.form["user"]
    destination = request.args.get("next", "/")
    if urlparse(destination).netloc:
        destination = "/"
    return redirect(destination)
