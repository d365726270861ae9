from fastapi import FastAPI

app = FastAPI()
ITEMS = [{"price": 3}, {"price": 12}]


@app.get("/items")
def items(min_price: float = 0.0):
    return [item for item in ITEMS if item["price"] >= min_price]
