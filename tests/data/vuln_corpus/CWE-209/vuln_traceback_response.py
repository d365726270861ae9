import traceback

from flask import Flask

app = Flask(__name__)


@app.get("/report")
def report():
    try:
        return build_report()
    except Exception:
        return traceback.format_exc(), 500


def build_report():
    return "ok"
