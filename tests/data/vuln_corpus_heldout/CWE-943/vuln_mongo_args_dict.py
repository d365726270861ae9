from flask import Flask, jsonify, request
from pymongo import MongoClient

app = Flask(__name__)
db = MongoClient().shop


@app.post("/orders/search")
def search_orders():
    return jsonify(list(db.orders.find(request.json, {"_id": 0})))
