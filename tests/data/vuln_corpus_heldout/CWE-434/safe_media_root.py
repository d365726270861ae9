import os
import uuid

from flask import Flask, abort, request

app = Flask(__name__)
MEDIA_ROOT = "/var/www/media"


@app.post("/attach")
def attach():
    f = request.files["file"]
    if not f.filename.lower().endswith((".png", ".jpg")):
        abort(415)
    f.save(os.path.join(MEDIA_ROOT, uuid.uuid4().hex + os.path.splitext(f.filename)[1].lower()))
    return "ok"
