import re

from flask import Flask, request

app = Flask(__name__)
NAMES = ["ada", "grace", "linus"]


@app.get("/find")
def find():
    pattern = request.args["pattern"]
    return {"hits": [n for n in NAMES if re.search(pattern, n)]}
