from pathlib import Path

from flask import Flask, request

app = Flask(__name__)
REPORTS = Path("/var/reports")


@app.get("/report")
def report():
    name = request.args["file"]
    return (REPORTS / name).read_text()
