"""The FastAPI application tests/apps/test_asgi_apps.py serves with `forkd serve`: the
same routes as the WSGI one (tests/apps/wsgiapps.py), for the same framing cases.

    forkd serve tests.apps.asgiapps:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import fastapi
from fastapi.responses import JSONResponse, Response, StreamingResponse

app = fastapi.FastAPI()
GET_AND_HEAD = ["GET", "HEAD"]


@app.api_route("/hello", methods=GET_AND_HEAD)
async def hello() -> dict[str, Any]:
    return {"hello": "world", "pid": os.getpid()}


@app.post("/echo")
async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"got": payload}


@app.api_route("/stream", methods=GET_AND_HEAD)
async def stream() -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        for n in range(100):
            yield b"line %d\n" % n

    return StreamingResponse(lines(), media_type="text/plain")


@app.get("/nothing")
async def nothing() -> Response:
    return Response(status_code=204)


@app.get("/tagged")
async def tagged(request: fastapi.Request) -> Response:
    """An ETag'd JSON document: 304 Not Modified for a client that has it."""
    if request.headers.get("if-none-match") == '"v1"':
        return Response(status_code=304, headers={"ETag": '"v1"'})
    return JSONResponse({"version": 1}, headers={"ETag": '"v1"'})


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("the secret database password is hunter2")


#: the paths whose application errors are on purpose: forkd logs them, nothing else may
FAILING_ON_PURPOSE = frozenset({"/boom"})
