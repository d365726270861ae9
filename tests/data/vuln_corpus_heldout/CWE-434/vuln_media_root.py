import os

from flask import Flask, request

app = Flask(__name__)
MEDIA_ROOT = "/var/www/media"


@app.post("/attach")
def attach():
    f = request.files["file"]
    f.save(os.path.join(MEDIA_ROOT, os.path.basename(f.filename)))
    return "ok"
