"""A request leaves nothing for the garbage collector: its objects go by reference counting
the moment it is answered (a cycle per request cost WSGI and ASGI workers 10-20% of their
CPU in the collector, in bench_http.py's profile)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from forkd.testing import StringTransport
from forkd.web.asgi import ASGIResource
from forkd.web.server import Site
from forkd.web.wsgi import WSGIResource

REQUESTS = 200


async def asgi_hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


def wsgi_hello(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


@pytest.mark.parametrize(
    ("resource", "request_bytes"),
    [
        (lambda: ASGIResource(asgi_hello), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (lambda: WSGIResource(wsgi_hello), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            lambda: ASGIResource(asgi_hello),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            lambda: WSGIResource(wsgi_hello),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        ),
    ],
    ids=["asgi-get", "wsgi-get", "asgi-post", "wsgi-post"],
)
def test_answered_requests_leave_no_cycles(resource: Any, request_bytes: bytes) -> None:
    async def serve() -> tuple[int, int]:
        site = Site(resource())
        channel = site.buildProtocol(("INET", "127.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        gc.collect()
        gc.disable()
        try:
            for _ in range(REQUESTS):
                before = transport.value().count(b"HTTP/1.1 200 ")
                channel.dataReceived(request_bytes)
                for _ in range(1000):  # until it is answered (a thread, for WSGI)
                    if transport.value().count(b"HTTP/1.1 200 ") > before:
                        break
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
            return gc.collect(), transport.value().count(b"HTTP/1.1 200 ")
        finally:
            gc.enable()

    freed, answered = asyncio.run(serve())
    assert answered == REQUESTS
    assert freed < REQUESTS, f"{freed / REQUESTS:.1f} objects per request left to the collector"
