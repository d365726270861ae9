import logging

from flask import Flask

app = Flask(__name__)


@app.get("/report")
def report():
    try:
        return build_report()
    except Exception:
        logging.exception("report failed")
        return "internal error", 500


def build_report():
    return "ok"
