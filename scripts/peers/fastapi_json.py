"""The small FastAPI app of the hosting benchmark: one JSON route, serialised per request.

Run under `forkd serve fastapi_json:app` and uvicorn alike. FastAPI's default response
class validates and encodes the returned dict, as an application would.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.get("/json")
async def hello_json() -> dict[str, Any]:
    return {"message": "Hello, world!"}
