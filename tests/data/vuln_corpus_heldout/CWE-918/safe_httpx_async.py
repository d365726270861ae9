import httpx
from fastapi import FastAPI

app = FastAPI()


@app.get("/proxy")
async def proxy(item_id: int):
    async with httpx.AsyncClient() as client:
        r = await client.get(f"https://inventory.internal.example/items/{item_id}")
    return {"status": r.status_code}
