from flask import Flask, redirect, request, session

app = Flask(__name__)


@app.post("/login")
def login():
    session["user"] = request.form["user"]
    destination = request.args.get("next", "/")
    return redirect(destination)
