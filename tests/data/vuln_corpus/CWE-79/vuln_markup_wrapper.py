from flask import Flask, request
from markupsafe import Markup

app = Flask(__name__)


@app.get("/comment")
def comment():
    body = request.args["body"]
    return Markup("<p>{}</p>".format(body))
