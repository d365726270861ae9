from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/balance")
def balance(account: str):
    try:
        return {"balance": lookup(account)}
    except Exception as err:
        return JSONResponse({"error": str(err)}, status_code=500)


def lookup(account):
    return 0
