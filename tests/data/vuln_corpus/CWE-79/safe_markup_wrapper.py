from flask import Flask, render_template, request

app = Flask(__name__)


@app.get("/comment")
def comment():
    body = request.args["body"]
    return render_template("comment.html", body=body)
