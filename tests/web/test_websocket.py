"""forkd.web's WebSocket (wsproto) and the ASGI websocket protocol, driven by an
independent client (the websockets library) over real loopback sockets."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator
from typing import Any

import fastapi
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from forkd.protocol import stats
from forkd.testing import wait_for
from forkd.web.asgi import ASGIResource
from forkd.web.server import Site
from tests.webserving import ServedSite, serving

TIMEOUT = 10.0


def echo_app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.websocket("/echo")
    async def echo(sock: fastapi.WebSocket) -> None:
        offered = sock.scope["subprotocols"]
        await sock.accept(subprotocol=offered[0] if offered else None)
        while True:
            message = await sock.receive()
            if message["type"] == "websocket.disconnect":
                app.state.disconnects.append(message["code"])
                return
            if message.get("text") is not None:
                if message["text"] == "close-4000":
                    await sock.close(4000, "asked")
                    return
                if message["text"] == "fail":
                    raise RuntimeError("the application failed")
                await sock.send_text("echo:" + message["text"])
            else:
                await sock.send_bytes(message["bytes"][::-1])

    @app.websocket("/refuse")
    async def refuse(sock: fastapi.WebSocket) -> None:
        await sock.close()

    @app.websocket("/crash")
    async def crash(sock: fastapi.WebSocket) -> None:
        raise RuntimeError("before accepting")

    @app.websocket("/scope")
    async def scope(sock: fastapi.WebSocket) -> None:
        await sock.accept()
        await sock.send_json(
            {
                "type": sock.scope["type"],
                "scheme": sock.scope["scheme"],
                "path": sock.scope["path"],
                "query": sock.scope["query_string"].decode(),
                "state": sock.scope["state"].get("marker"),
            }
        )
        await sock.close()

    app.state.disconnects = []
    return app


async def deny(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app using the websocket.http.response extension to answer 401 itself."""
    assert scope["type"] == "websocket"
    assert "websocket.http.response" in scope["extensions"]
    assert (await receive())["type"] == "websocket.connect"
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"are you?"})


@pytest.fixture
def app() -> fastapi.FastAPI:
    return echo_app()


@pytest.fixture
def site(app: fastapi.FastAPI) -> Site:
    resource = ASGIResource(app)
    resource.state["marker"] = "from lifespan"
    return Site(resource)


@pytest.fixture
def served(site: Site) -> Iterator[ServedSite]:
    with serving(site) as running:
        yield running


def url(served: ServedSite, path: str = "/echo") -> str:
    return f"ws://127.0.0.1:{served.port}{path}"


def test_text_binary_and_fragmented_messages_echo(served: ServedSite) -> None:
    with connect(url(served)) as client:
        client.send("hello")
        assert client.recv(TIMEOUT) == "echo:hello"
        client.send(b"\x00\x01\x02")
        assert client.recv(TIMEOUT) == b"\x02\x01\x00"
        client.send(["frag", "men", "ted"])  # one message in three frames
        assert client.recv(TIMEOUT) == "echo:fragmented"
        big = os.urandom(200_000)
        client.send(big)
        assert client.recv(TIMEOUT) == big[::-1]


def test_the_subprotocol_and_compression_are_negotiated(served: ServedSite) -> None:
    with connect(url(served), subprotocols=["chat", "other"]) as client:  # type: ignore[list-item]
        assert client.subprotocol == "chat"
        assert "permessage-deflate" in client.response.headers["Sec-WebSocket-Extensions"]
        client.send("x" * 50_000)  # compresses to almost nothing: still whole at the far end
        assert client.recv(TIMEOUT) == "echo:" + "x" * 50_000


def test_compression_can_be_turned_off(site: Site, served: ServedSite) -> None:
    site.websocketPerMessageDeflate = False
    with connect(url(served)) as client:
        assert "Sec-WebSocket-Extensions" not in client.response.headers
        client.send("plain")
        assert client.recv(TIMEOUT) == "echo:plain"


def test_the_scope_is_a_websocket_scope_with_lifespan_state(served: ServedSite) -> None:
    with connect(url(served, "/scope?a=1")) as client:
        assert client.recv(TIMEOUT) == (
            '{"type":"websocket","scheme":"ws","path":"/scope","query":"a=1",'
            '"state":"from lifespan"}'
        )


def test_pings_from_the_client_are_answered(served: ServedSite) -> None:
    with connect(url(served)) as client:
        assert client.ping(b"are you there").wait(TIMEOUT)


def test_close_codes_travel_both_ways(app: fastapi.FastAPI, served: ServedSite) -> None:
    with connect(url(served)) as client:
        client.send("close-4000")
        with pytest.raises(ConnectionClosed):
            client.recv(TIMEOUT)
        assert client.close_code == 4000
        assert client.close_reason == "asked"
    with connect(url(served)) as client:
        client.send("one")
        assert client.recv(TIMEOUT) == "echo:one"
        client.close(1001, "leaving")
    wait_for(lambda: 1001 in app.state.disconnects, message="the app to see 1001")


def test_an_application_error_after_accepting_closes_1011(served: ServedSite) -> None:
    with connect(url(served)) as client:
        client.send("fail")
        with pytest.raises(ConnectionClosed):
            client.recv(TIMEOUT)
        assert client.close_code == 1011


def test_closing_before_accepting_is_403_and_failing_is_500(served: ServedSite) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(url(served, "/refuse"))
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as crashed:
        connect(url(served, "/crash"))
    assert crashed.value.response.status_code == 500


def test_the_denial_response_extension_sends_the_applications_response() -> None:
    with serving(Site(ASGIResource(deny))) as served, pytest.raises(InvalidStatus) as denied:
        connect(url(served, "/"))
    assert denied.value.response.status_code == 401
    assert denied.value.response.body == b"who are you?"


def test_a_message_over_the_size_limit_closes_1009(site: Site, served: ServedSite) -> None:
    site.websocketMaxSize = 64 * 1024
    with connect(url(served), max_size=None) as client:
        client.send(b"x" * (64 * 1024))  # at the limit: fine
        assert len(client.recv(TIMEOUT)) == 64 * 1024
        client.send(b"x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed):
            client.recv(TIMEOUT)
        assert client.close_code == 1009


def handshake(port: int, path: bytes = b"/echo") -> socket.socket:
    """A raw WebSocket client that answers nothing, not even pings."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key)
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101 ")
    return sock


def frames_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def close_code(frames: bytes) -> int | None:
    """The code of the first close frame (opcode 8) among unmasked server frames."""
    position = 0
    while position + 2 <= len(frames):
        opcode, length = frames[position] & 0x0F, frames[position + 1] & 0x7F
        if opcode == 8:
            return int.from_bytes(frames[position + 2 : position + 4], "big")
        position += 2 + length
    return None


def test_a_peer_that_does_not_answer_pings_is_closed_1011(site: Site, served: ServedSite) -> None:
    site.websocketPingInterval = 0.1
    site.websocketPingTimeout = 0.2
    with handshake(served.port) as sock:
        frames = frames_until_eof(sock)  # the server ends it: recv returns b"" (or times out)
    assert frames[0] & 0x0F == 9  # a ping came first
    assert close_code(frames) == 1011


def test_a_bad_handshake_is_400_not_a_crash(served: ServedSite) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        assert frames_until_eof(sock).startswith(b"HTTP/1.1 400 ")
    with connect(url(served)) as client:  # and the next one is served
        client.send("still")
        assert client.recv(TIMEOUT) == "echo:still"


def drain(served: ServedSite, shutting_down: bool) -> None:
    def go() -> None:
        stats.shuttingDown = shutting_down
        for protocol in list(stats.open):
            if getattr(protocol, "factory", None) is served.site:
                protocol.connectionDraining()

    served.call(go)


@pytest.mark.parametrize(("shutting_down", "code"), [(False, 1012), (True, 1001)])
def test_a_draining_worker_closes_websockets_1012_or_1001(
    site: Site, served: ServedSite, shutting_down: bool, code: int
) -> None:
    site.websocketDrain = 0.05
    try:
        with connect(url(served)) as client:
            client.send("before")
            assert client.recv(TIMEOUT) == "echo:before"
            drain(served, shutting_down)
            with pytest.raises(ConnectionClosed):
                client.recv(TIMEOUT)
            assert client.close_code == code
    finally:
        stats.shuttingDown = False


def test_the_application_may_finish_its_websocket_within_the_drain_time(
    site: Site, served: ServedSite
) -> None:
    site.websocketDrain = TIMEOUT  # longer than the test: only the client's own close ends it
    with connect(url(served)) as client:
        drain(served, False)
        client.send("during the drain")
        assert client.recv(TIMEOUT) == "echo:during the drain"
        client.send("close-4000")
        with pytest.raises(ConnectionClosed):
            client.recv(TIMEOUT)
        assert client.close_code == 4000


def test_each_websocket_message_counts_as_a_request(served: ServedSite) -> None:
    """So --max-requests recycles a worker that only serves WebSockets (gunicorn#3086)."""
    before = stats.requests
    with connect(url(served)) as client:
        for n in range(5):
            client.send(str(n))
            assert client.recv(TIMEOUT) == f"echo:{n}"
    assert stats.requests - before >= 5
