"""The ASGI WebSocket protocol (spec 2.4) over forkd.web.websocket.WebSocket.

One `WebSocketSession` per upgrade request: the application's first `receive()` is
`websocket.connect`; it answers `websocket.accept` (101), `websocket.close` (403 before
accepting, as the spec says) or, with the `websocket.http.response` extension, its own HTTP
response. Then `websocket.receive`/`websocket.send` carry text and bytes, and
`websocket.disconnect` carries the close code, whoever closed. An application that fails
before accepting gets a 500; after, close 1011. One that returns without closing gets 1000.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from forkd.web.websocket import INTERNAL_ERROR, NORMAL, Closed, ConnectionClosedError, WebSocket

log = logging.getLogger("forkd.web.asgi")

Message = MutableMapping[str, Any]


def websocket_scope(http_scope: Message, socket: WebSocket) -> Message:
    """The websocket scope from the HTTP scope of the upgrade request."""
    scope = dict(http_scope)
    scope["type"] = "websocket"
    scope["asgi"] = {"version": "3.0", "spec_version": "2.4"}
    scope["scheme"] = "wss" if http_scope["scheme"] == "https" else "ws"
    scope["subprotocols"] = socket.subprotocols
    scope["extensions"] = {"websocket.http.response": {}}
    scope.pop("method", None)
    return scope


class WebSocketSession:
    """One application run for one WebSocket: its receive() and send()."""

    def __init__(self, application: Any, request: Any, scope: Message) -> None:
        self.application = application
        self.socket = WebSocket(request)
        self.scope = websocket_scope(scope, self.socket)
        self.connected = False  # websocket.connect delivered
        self.answered = False  # accepted, refused, or an HTTP response begun
        self.accepted = False
        self.responding = False  # a denial response is being sent

    async def receive(self) -> Message:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        message = await self.socket.receive()
        if isinstance(message, Closed):
            return {
                "type": "websocket.disconnect",
                "code": int(message.code),
                "reason": message.reason,
            }
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        socket = self.socket
        if kind == "websocket.send" and self.accepted:
            text = message.get("text")
            await socket.send(text if text is not None else bytes(message.get("bytes") or b""))
        elif kind == "websocket.accept" and not self.answered:
            self.answered = self.accepted = True
            socket.accept(message.get("subprotocol"), message.get("headers", ()))
        elif kind == "websocket.close":
            if not self.answered:
                self.answered = True
                socket.reject(403)
            elif self.accepted:
                socket.close(int(message.get("code") or NORMAL), message.get("reason") or "")
            else:
                raise ConnectionClosedError("the WebSocket is closed")
        elif kind == "websocket.http.response.start" and not self.answered:
            self.answered = self.responding = True
            socket.rejectStart(int(message["status"]), message.get("headers", ()))
        elif kind == "websocket.http.response.body" and self.responding:
            socket.rejectBody(bytes(message.get("body", b"")), bool(message.get("more_body")))
        elif self.answered and not self.accepted and not self.responding:
            raise ConnectionClosedError("the WebSocket was refused")
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for a WebSocket")

    async def run(self) -> None:
        socket = self.socket
        if not socket.valid:
            socket.reject(400)
            return
        try:
            await self.application(self.scope, self.receive, self.send)
        except ConnectionClosedError:
            return  # the peer left while the application was sending: as uvicorn, quietly
        except Exception:
            log.exception("ASGI WebSocket application failed on %s", self.scope["path"])
            if not self.answered:
                socket.reject(500)
            elif self.accepted:
                socket.close(INTERNAL_ERROR)
            return
        if not self.answered:
            log.error("ASGI WebSocket application returned without accepting or closing")
            socket.reject(500)
        elif self.accepted:
            socket.close(NORMAL)
