from os import system as run

from flask import Flask, request

app = Flask(__name__)


@app.post("/ping")
def ping():
    host = request.form["host"]
    run(f"ping -c 1 {host}")
    return "sent"
