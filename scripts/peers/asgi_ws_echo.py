"""The raw ASGI WebSocket echo app of scripts/bench_websocket.py (forkd vs uvicorn,
messages/s): every text or binary message is sent straight back, nothing else is done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Accept every WebSocket and echo each message; plain HTTP gets a 404."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            reply = {"type": "websocket.send"}
            if message.get("bytes") is not None:
                reply["bytes"] = message["bytes"]
            else:
                reply["text"] = message.get("text", "")
            await send(reply)
        else:  # websocket.disconnect
            return
