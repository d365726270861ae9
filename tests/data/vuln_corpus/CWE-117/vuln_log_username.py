import logging

from flask import Flask, request

app = Flask(__name__)
audit = logging.getLogger("audit")


@app.post("/orders")
def create_order():
    customer = request.form["customer"]
    audit.warning("order placed by " + customer)
    return "ok"
