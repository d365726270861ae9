from flask import Flask, request, send_file

app = Flask(__name__)


def locate(name):
    return "/data/exports/" + name


@app.get("/export")
def export():
    return send_file(locate(request.args["name"]))
