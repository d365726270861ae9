from flask import Flask, request
from jinja2 import Template

app = Flask(__name__)
PREVIEW = Template("<div>{{ body }}</div>", autoescape=True)


@app.post("/preview")
def preview():
    return PREVIEW.render(body=request.form["body"])
