"""Raw ASGI app answering every request with the same 10 KiB JSON document.

The document is encoded once, at import: the scenario measures how each server carries a
10 KiB body (one larger write per response), not the speed of `json.dumps`, which would be
the same for every server and only dilute the ratios. The Flask and FastAPI peers are the
ones that serialise per request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

SIZE = 10 * 1024


def document(size: int = SIZE) -> bytes:
    """A JSON list of small records, padded so that its encoding is exactly `size` bytes."""
    records: list[dict[str, Any]] = []
    body = {"records": records, "padding": ""}
    while True:
        record = {"id": len(records), "name": f"item-{len(records)}", "tags": ["a", "b"]}
        records.append(record)
        if len(json.dumps(body, separators=(",", ":"))) > size:
            records.pop()
            break
    body["padding"] = "x" * (size - len(json.dumps(body, separators=(",", ":"))))
    return json.dumps(body, separators=(",", ":")).encode()


BODY = document()
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(BODY)),
    ],
}
RESPONSE = {"type": "http.response.body", "body": BODY}


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Answer every HTTP request with BODY; lifespan as in asgi_hello (nothing to set up)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(START)
    await send(RESPONSE)
