import base64
import pickle as pk

from flask import Flask, request

app = Flask(__name__)


@app.get("/cart")
def cart():
    raw = base64.b64decode(request.cookies["cart"])
    items = pk.loads(raw)
    return {"count": len(items)}
