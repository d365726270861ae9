from flask import Flask, request, send_from_directory

app = Flask(__name__)


@app.get("/export")
def export():
    return send_from_directory("/data/exports", request.args["name"])
