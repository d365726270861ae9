from fastapi import FastAPI

app = FastAPI()
ITEMS = [{"price": 3}, {"price": 12}]


@app.get("/items")
def items(where: str):
    return [item for item in ITEMS if eval(where, {}, dict(item))]
