import logging

from fastapi import FastAPI, Request

app = FastAPI()
log = logging.getLogger("api")


@app.get("/lookup")
async def lookup(request: Request):
    ref = request.query_params.get("ref", "")
    log.info("lookup ref=%r", ref)
    return {}
