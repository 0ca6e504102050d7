"""forkd.web over real loopback sockets: keep-alive, pipelining, limits, slowloris, drain."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from forkd import protocol
from forkd.testing import wait_for
from forkd.web import server
from forkd.web.hello import Hello
from forkd.web.resource import NOT_DONE_YET, Resource
from tests.webserving import ResponseReader, connect, get, request, serving


class Slow(Resource):
    """GET /slow answers only when the test releases it (from the server's thread)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/slow":
            self.pending.append(request)
            return NOT_DONE_YET
        return b"fast " + request.path

    def render_POST(self, request: Any) -> bytes:
        return b"posted %d" % len(request.content.read())


@pytest.fixture(params=["uvloop", "asyncio"])
def hello(request: Any) -> Any:
    with serving(server.Site(Hello()), loop=request.param) as served:
        yield served


def test_keep_alive_serves_many_requests_on_one_connection(hello: Any) -> None:
    with connect(hello.port) as sock:
        reader = ResponseReader(sock)
        for _ in range(20):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = reader.read()
            assert response.status == 200 and response.body == b"Hello, world!\n"


def test_pipelined_burst_is_answered_in_order(hello: Any) -> None:
    with connect(hello.port) as sock:
        burst = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n" * 50
        sock.sendall(burst + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reader = ResponseReader(sock)
        for _ in range(50):
            assert reader.read().body == b"Hello, world!\n"
            head = reader.read(head=True)
            assert head.body == b"" and head.headers[b"content-length"] == b"14"
        last = reader.read()
        assert last.headers[b"connection"] == b"close"
        assert reader.at_eof()


def test_pipelining_behind_a_slow_response_keeps_order() -> None:
    slow = Slow()
    with serving(server.Site(slow)) as served, connect(served.port) as sock:
        sock.sendall(
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n12345"
        )
        wait_for(lambda: slow.pending, message="the slow request")

        def release() -> None:
            req = slow.pending.pop()
            req.write(b"slow ")
            req.write(b"done")
            req.finish()

        served.call(release)
        reader = ResponseReader(sock)
        assert [reader.read().body for _ in range(3)] == [b"slow done", b"fast /a", b"posted 5"]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x00\x01garbage\r\n\r\n", 400),
        (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 100_000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n", 413),
    ],
)
def test_error_statuses_on_a_real_socket(hello: Any, data: bytes, status: int) -> None:
    response = request(hello.port, data)
    assert response.status == status


def test_header_timeout_cuts_off_slowloris_while_others_are_served() -> None:
    site = server.Site(Hello())
    site.headerTimeout = 0.5
    with serving(site) as served, connect(served.port) as loris:
        loris.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        trickle = [b"X-a: 1\r\n", b"X-b: 2\r\n", b"X-c: 3\r\n"]
        reader = ResponseReader(loris)
        while trickle:  # keep trickling headers: it must not extend the deadline
            loris.sendall(trickle.pop())
            assert get(served.port).status == 200  # other clients are served meanwhile
        response = reader.read()
        assert response.status == 408
        assert reader.at_eof()
        assert time.monotonic() - started < 5


def test_request_body_and_expect_continue_over_socket() -> None:
    with serving(server.Site(Slow())) as served, connect(served.port) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        reader = ResponseReader(sock)
        assert reader._line() == b"HTTP/1.1 100 Continue"
        assert reader._line() == b""
        sock.sendall(b"abc")
        assert reader.read().body == b"posted 3"


def test_drain_closes_idle_and_finishes_in_progress_with_connection_close() -> None:
    slow = Slow()
    with serving(server.Site(slow)) as served:
        idle = connect(served.port)
        busy = connect(served.port)
        idle_reader, busy_reader = ResponseReader(idle), ResponseReader(busy)
        idle.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle_reader.read().body == b"fast /x"
        busy.sendall(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert busy_reader.read().body == b"fast /y"
        wait_for(lambda: slow.pending, message="the slow request")

        def drain() -> None:
            for proto in list(protocol.stats.open):
                if getattr(proto, "factory", None) is served.site:
                    proto.connectionDraining()

        served.call(drain)
        assert idle_reader.at_eof()

        def release() -> None:
            slow.pending.pop().finish()

        served.call(release)
        response = busy_reader.read()
        assert response.status == 200 and response.headers[b"connection"] == b"close"
        assert busy_reader.at_eof()
        idle.close()
        busy.close()


def test_server_survives_peer_reset_mid_request(hello: Any) -> None:
    sock = connect(hello.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    assert get(hello.port).status == 200


def test_413_reaches_a_client_still_uploading(hello: Any) -> None:
    with connect(hello.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        sock.sendall(b"x" * 2_000_000)  # the server discards it while it lingers
        reader = ResponseReader(sock)
        response = reader.read()
        assert response.status == 413 and response.headers[b"connection"] == b"close"
