from fastapi import FastAPI, Response

app = FastAPI()


@app.post("/login")
def login(response: Response):
    response.set_cookie(key="session", value="s-123", secure=True)
    return {"ok": True}
