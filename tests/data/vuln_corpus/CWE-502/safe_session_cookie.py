import base64
import json

from flask import Flask, request

app = Flask(__name__)


@app.get("/cart")
def cart():
    raw = base64.b64decode(request.cookies["cart"])
    items = json.loads(raw)
    return {"count": len(items)}
