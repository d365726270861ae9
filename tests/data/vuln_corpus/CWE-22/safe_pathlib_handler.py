from pathlib import Path

from flask import Flask, abort, request

app = Flask(__name__)
REPORTS = Path("/var/reports").resolve()


@app.get("/report")
def report():
    target = (REPORTS / request.args["file"]).resolve()
    if not target.is_relative_to(REPORTS):
        abort(404)
    return target.read_text()
