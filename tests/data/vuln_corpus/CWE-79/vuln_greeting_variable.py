from flask import Flask, request

app = Flask(__name__)


@app.route("/hello")
def hello():
    visitor = request.args.get("name", "stranger")
    page = "<h1>Welcome back, %s!</h1>" % visitor
    return page
