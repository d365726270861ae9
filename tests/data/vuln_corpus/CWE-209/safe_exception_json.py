import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/balance")
def balance(account: str):
    try:
        return {"balance": lookup(account)}
    except Exception as err:
        logging.error("lookup failed: %s", type(err).__name__)
        return JSONResponse({"error": "internal error"}, status_code=500)


def lookup(account):
    return 0
