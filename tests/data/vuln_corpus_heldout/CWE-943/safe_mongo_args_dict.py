from flask import Flask, jsonify, request
from pymongo import MongoClient

app = Flask(__name__)
db = MongoClient().shop


@app.post("/orders/search")
def search_orders():
    status = str(request.json.get("status", ""))
    return jsonify(list(db.orders.find({"status": status}, {"_id": 0})))
