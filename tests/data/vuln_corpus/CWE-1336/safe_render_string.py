from flask import Flask, render_template_string, request

app = Flask(__name__)


@app.get("/card")
def card():
    title = request.args.get("title", "")
    return render_template_string("<div class='card'>{{ title }}</div>", title=title)
