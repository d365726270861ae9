import os

from flask import Flask, request
from werkzeug.utils import secure_filename

app = Flask(__name__)


@app.post("/avatar")
def avatar():
    upload = request.files["avatar"]
    upload.save(os.path.join("/srv/static/avatars", secure_filename(upload.filename)))
    return "ok"
