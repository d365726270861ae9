import re

from flask import Flask, request

app = Flask(__name__)
NAMES = ["ada", "grace", "linus"]


@app.get("/find")
def find():
    literal = re.escape(request.args["pattern"])
    return {"hits": [n for n in NAMES if re.search(literal, n)]}
