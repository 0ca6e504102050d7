"""gunicorn's request limits and uvicorn's --limit-concurrency on forkd.web's HTTPChannel.

Each limit exact at its boundary (N passes, N+1 fails), whatever the chunking of the
bytes; 0 turns a limit off; the 503 of the concurrency limit comes at once, with
Retry-After and Connection: close, and the resource never sees the request.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from forkd.testing import StringTransport, connect, disconnect
from forkd.web import server
from forkd.web.hello import Hello
from forkd.web.resource import NOT_DONE_YET, Resource
from tests.web.test_channel import Later, responses


def channel_for(site: server.Site) -> tuple[Any, StringTransport]:
    transport = StringTransport()
    return connect(site, transport), transport


def status_of(data: bytes, chunk: int = 0, **settings: Any) -> int:
    """The status a new connection gets for `data`, fed whole or `chunk` bytes at a time."""
    site = server.Site(Hello())
    for name, value in settings.items():
        setattr(site, name, value)
    channel, transport = channel_for(site)
    step = chunk or len(data)
    for start in range(0, len(data), step):
        channel.dataReceived(data[start : start + step])
    [response] = responses(transport)
    status: int = response.status
    return status


def request_line(length: int, method: bytes = b"GET") -> bytes:
    """A request whose request line (method SP target SP HTTP/1.1) is `length` bytes."""
    target = b"/" + b"a" * (length - len(method) - len(b"  HTTP/1.1") - 1)
    line = b"%s %s HTTP/1.1" % (method, target)
    assert len(line) == length
    return line + b"\r\nHost: x\r\n\r\n"


# -- --limit-request-line ------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 1, 7, 1000])
@pytest.mark.parametrize("method", [b"GET", b"OPTIONS", b"UNSUBSCRIBE"])
def test_the_request_line_limit_is_exact(chunk: int, method: bytes) -> None:
    assert server.Site.limitRequestLine == 4094  # gunicorn's default
    answered = {b"GET": 200, b"OPTIONS": 405, b"UNSUBSCRIBE": 501}[method]  # Hello's answers
    assert status_of(request_line(4094, method), chunk) == answered
    assert status_of(request_line(4095, method), chunk) == 414


def test_the_request_line_limit_can_be_set_or_turned_off() -> None:
    assert status_of(request_line(100), limitRequestLine=100) == 200
    assert status_of(request_line(101), limitRequestLine=100) == 414
    assert status_of(request_line(20000), limitRequestLine=0) == 200
    # off, the header block's own limit still holds
    assert status_of(request_line(70000), limitRequestLine=0) == 431


def test_an_absolute_form_target_counts_whole() -> None:
    target = b"http://example.com/" + b"a" * (4094 - len(b"GET  HTTP/1.1") - 19)
    assert status_of(b"GET %s HTTP/1.1\r\nHost: example.com\r\n\r\n" % target) == 200
    assert status_of(b"GET %sa HTTP/1.1\r\nHost: example.com\r\n\r\n" % target) == 414


def test_a_414_closes_the_connection() -> None:
    site = server.Site(Hello())
    channel, transport = channel_for(site)
    channel.dataReceived(request_line(5000))
    [response] = responses(transport)
    assert response.status == 414 and response.headers[b"connection"] == b"close"
    assert transport.disconnecting


# -- --limit-request-fields ----------------------------------------------------------------


def with_fields(count: int) -> bytes:
    """A request with `count` header fields, Host among them."""
    extra = b"".join(b"X-%d: y\r\n" % n for n in range(count - 1))
    return b"GET / HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


@pytest.mark.parametrize("chunk", [0, 1, 13])
def test_the_field_count_limit_is_exact(chunk: int) -> None:
    assert server.Site.limitRequestFields == 100
    assert status_of(with_fields(100), chunk) == 200
    assert status_of(with_fields(101), chunk) == 431


def test_the_field_count_limit_can_be_set_or_turned_off() -> None:
    assert status_of(with_fields(3), limitRequestFields=3) == 200
    assert status_of(with_fields(4), limitRequestFields=3) == 431
    assert status_of(with_fields(2000), limitRequestFields=0) == 200


# -- --limit-request-field_size ---------------------------------------------------------------


def with_field(size: int, name: bytes = b"X-Big") -> bytes:
    """A request with one field `Name: value` of `size` bytes."""
    value = b"v" * (size - len(name) - 2)
    return b"GET / HTTP/1.1\r\nHost: x\r\n%s: %s\r\n\r\n" % (name, value)


@pytest.mark.parametrize("chunk", [0, 1, 500])
def test_the_field_size_limit_is_exact(chunk: int) -> None:
    assert server.Site.limitRequestFieldSize == 8190
    assert status_of(with_field(8190), chunk) == 200
    assert status_of(with_field(8191), chunk) == 431


def test_the_field_size_limit_counts_the_name_too_and_can_be_turned_off() -> None:
    long_name = b"X-" + b"n" * 60
    assert status_of(with_field(100, long_name), limitRequestFieldSize=100) == 200
    assert status_of(with_field(101, long_name), limitRequestFieldSize=100) == 431
    assert status_of(with_field(30000), limitRequestFieldSize=0) == 200
    assert status_of(with_field(70000), limitRequestFieldSize=0) == 431  # maxHeaderSize


def test_a_pipelined_request_over_a_limit_is_answered_after_the_good_ones() -> None:
    site = server.Site(Hello())
    channel, transport = channel_for(site)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + with_field(9000))
    first, second = responses(transport)
    assert (first.status, second.status) == (200, 431)
    assert transport.disconnecting


# -- --limit-concurrency -------------------------------------------------------------------


class Streaming(Resource):
    """A resource that is rendered at the headers, as the WSGI and ASGI ones are."""

    isLeaf = True
    streamsBody = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered = 0

    def render_POST(self, request: Any) -> Any:
        self.rendered += 1
        return NOT_DONE_YET


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def limited(limit: int, resource: Resource | None = None) -> server.Site:
    site = server.Site(resource or Later())
    site.limitConcurrency = limit
    return site


def test_requests_beyond_the_limit_are_503_at_once_and_never_rendered() -> None:
    later = Later()
    site = limited(2, later)
    for _ in range(2):
        channel_for(site)[0].dataReceived(GET)
    assert len(later.pending) == 2 and site._inflight == 2
    channel, transport = channel_for(site)
    channel.dataReceived(GET)
    [response] = responses(transport)
    assert response.status == 503
    assert response.headers[b"retry-after"] == b"1"
    assert response.headers[b"connection"] == b"close" and transport.disconnecting
    assert len(later.pending) == 2, "the resource never saw the third request"


def test_a_finished_request_frees_its_place() -> None:
    later = Later()
    site = limited(1, later)
    channel_for(site)[0].dataReceived(GET)
    later.pending[0].finish()
    assert site._inflight == 0
    channel, transport = channel_for(site)
    channel.dataReceived(GET)
    assert len(later.pending) == 2 and site._inflight == 1
    later.pending[1].finish()
    assert [r.status for r in responses(transport)] == [200]


def test_a_client_that_leaves_frees_its_place() -> None:
    later = Later()
    site = limited(1, later)
    first, _ = channel_for(site)
    first.dataReceived(GET)
    disconnect(first)
    assert site._inflight == 0
    second, transport = channel_for(site)
    second.dataReceived(GET)
    assert len(later.pending) == 2
    disconnect(second)
    disconnect(second)  # twice: counted once
    assert site._inflight == 0


def test_pipelined_requests_take_their_place_in_turn() -> None:
    later = Later()
    site = limited(1, later)
    channel, transport = channel_for(site)
    channel.dataReceived(GET * 3)
    assert len(later.pending) == 1 and site._inflight == 1
    later.pending[0].finish()
    later.pending[1].finish()
    later.pending[2].finish()
    assert [r.status for r in responses(transport)] == [200, 200, 200]
    assert site._inflight == 0


def test_a_queued_request_over_the_limit_is_503_and_the_rest_dropped() -> None:
    """The limit was lowered while a request waited behind another (from the shell)."""
    later = Later()
    site = limited(2, later)
    channel_for(site)[0].dataReceived(GET)  # holds one place
    channel, transport = channel_for(site)
    channel.dataReceived(GET * 3)
    site.limitConcurrency = 1
    later.pending[1].finish()
    assert [r.status for r in responses(transport)] == [200, 503]
    assert transport.disconnecting and len(later.pending) == 2


def test_a_streaming_resource_over_the_limit_is_not_rendered() -> None:
    streaming = Streaming()
    site = limited(1, streaming)
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
    channel_for(site)[0].dataReceived(post)
    assert streaming.rendered == 1
    channel, transport = channel_for(site)
    channel.dataReceived(post + b"body")
    assert streaming.rendered == 1
    assert [r.status for r in responses(transport)] == [503]


def test_off_by_default_and_not_pickled() -> None:
    later = Later()
    site = server.Site(later)
    assert site.limitConcurrency == 0
    for _ in range(50):
        channel_for(site)[0].dataReceived(GET)
    assert len(later.pending) == 50 and site._inflight == 0
    counted = limited(5, Hello())
    counted._inflight = 3  # a worker's own count never travels in a tap
    assert pickle.loads(pickle.dumps(counted))._inflight == 0


def test_an_open_websocket_holds_its_place_until_it_closes() -> None:
    """As uvicorn counts its WebSocket tasks: a connection taken over by a WebSocket is a
    request in progress for as long as it lasts."""
    from websockets.sync.client import connect as websocket

    from forkd.testing import wait_for
    from forkd.web.asgi import ASGIResource
    from tests.webserving import get, serving

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"plain"})
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    site = limited(1, ASGIResource(app))
    with serving(site) as served:
        with websocket(f"ws://127.0.0.1:{served.port}/", open_timeout=10):
            response = get(served.port, b"/")
            assert response.status == 503 and response.headers[b"retry-after"] == b"1"
        wait_for(lambda: site._inflight == 0, 10, message="the WebSocket's place freed")
        assert get(served.port, b"/").body == b"plain"
