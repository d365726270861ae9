import os

from flask import Flask, abort, request
from werkzeug.utils import secure_filename

app = Flask(__name__)
IMAGE_TYPES = {".png", ".jpg", ".gif"}


@app.post("/avatar")
def avatar():
    upload = request.files["avatar"]
    name = secure_filename(upload.filename)
    if os.path.splitext(name)[1].lower() not in IMAGE_TYPES:
        abort(415)
    upload.save(os.path.join("/srv/static/avatars", name))
    return "ok"
