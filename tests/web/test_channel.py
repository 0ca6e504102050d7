"""HTTPChannel on a StringTransport: framing, keep-alive, pipelining, limits, timeouts, drain."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from forkd import protocol
from forkd.testing import Clock, StringTransport, connect, disconnect
from forkd.web import server
from forkd.web.hello import Hello
from forkd.web.resource import NOT_DONE_YET, Resource
from tests.webserving import ResponseReader


class Later(Resource):
    """Answers only when the test says so: the NOT_DONE_YET path."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.pending.append(request)
        return NOT_DONE_YET

    def render_POST(self, request: Any) -> bytes:
        return b"got " + request.content.read()


class Echo(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        return b"%s:%s" % (request.path, request.content.read())

    render_PUT = render_POST

    def render_GET(self, request: Any) -> bytes:
        return request.path


class Boom(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        raise RuntimeError("boom")


class _Bytes:
    """Parses what a StringTransport received with the socket client's parser."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, size: int) -> bytes:
        data, self.data = self.data[:size], self.data[size:]
        return data


def responses(transport: StringTransport, heads: tuple[bool, ...] = ()) -> list[Any]:
    reader = ResponseReader(_Bytes(transport.value()))  # type: ignore[arg-type]
    found = []
    index = 0
    while reader.buffer or reader._fill():
        found.append(reader.read(head=heads[index] if index < len(heads) else False))
        index += 1
    return found


def make(resource: Resource | None = None, **settings: Any) -> tuple[Any, StringTransport, Clock]:
    site = server.Site(resource or Hello())
    clock = Clock()
    site.clock = clock
    for name, value in settings.items():
        setattr(site, name, value)
    transport = StringTransport()
    return connect(site, transport), transport, clock


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_hello_response_has_date_server_length_and_keeps_alive() -> None:
    channel, transport, _ = make()
    channel.dataReceived(GET)
    [response] = responses(transport)
    assert response.status == 200
    assert response.body == b"Hello, world!\n"
    assert response.headers[b"content-length"] == b"14"
    assert response.headers[b"server"] == b"forkd"
    assert response.headers[b"date"].endswith(b" GMT")
    assert b"connection" not in response.headers
    assert not transport.disconnecting


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_pipelined_requests_in_any_chunk_size_answer_in_order(size: int) -> None:
    channel, transport, _ = make(Echo())
    stream = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    stream += b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
    for start in range(0, len(stream), size):
        channel.dataReceived(stream[start : start + size])
    bodies = [r.body for r in responses(transport)]
    assert bodies == [b"/0", b"/1", b"/2", b"/3", b"/4", b"/p:body"]


def test_requests_counter_counts_each_request() -> None:
    channel, _, _ = make()
    before = protocol.stats.requests
    channel.dataReceived(GET * 3)
    assert protocol.stats.requests == before + 3


@pytest.mark.parametrize(
    ("request_bytes", "closes", "connection_header"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, None),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True, b"close"),
        (b"GET / HTTP/1.0\r\n\r\n", True, b"close"),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False, b"keep-alive"),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", False, b"keep-alive"),
    ],
)
def test_keep_alive_rules_of_each_version(
    request_bytes: bytes, closes: bool, connection_header: bytes | None
) -> None:
    channel, transport, _ = make()
    channel.dataReceived(request_bytes)
    [response] = responses(transport)
    assert response.headers.get(b"connection") == connection_header
    assert transport.disconnecting is closes


def test_head_sends_headers_of_get_without_body() -> None:
    channel, transport, _ = make()
    channel.dataReceived(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    head, full = responses(transport, heads=(True,))
    assert head.headers[b"content-length"] == b"14" and head.body == b""
    assert full.body == b"Hello, world!\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
    ],
)
def test_error_statuses_close_the_connection(data: bytes, status: int) -> None:
    channel, transport, _ = make()
    channel.dataReceived(data)
    [response] = responses(transport)
    assert response.status == status
    assert response.headers[b"connection"] == b"close"
    assert transport.disconnecting


@pytest.mark.parametrize(
    ("method", "status"), [(b"PROPFIND", 501), (b"MKCOL", 501), (b"DELETE", 405), (b"PUT", 405)]
)
def test_method_the_resource_lacks_is_405_if_supported_else_501(method: bytes, status: int) -> None:
    channel, transport, _ = make()
    channel.dataReceived(b"%s / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % method + GET)
    first, second = responses(transport)
    assert (first.status, second.status) == (status, 200)


def test_405_lists_allowed_methods() -> None:
    channel, transport, _ = make()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    [response] = responses(transport)
    assert response.status == 405
    assert response.headers[b"allow"] == b"GET, HEAD"
    assert not transport.disconnecting  # a method error is not a protocol error


def test_many_small_header_chunks_over_limit_get_431() -> None:
    channel, transport, _ = make(maxHeaderSize=1000)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
    for i in range(40):
        channel.dataReceived(b"X-%d: %s\r\n" % (i, b"v" * 40))
    [response] = responses(transport)
    assert response.status == 431


def test_chunked_body_over_limit_gets_413() -> None:
    channel, transport, _ = make(Echo(), maxBodySize=10)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"8\r\n12345678\r\n")
    assert transport.value() == b""
    channel.dataReceived(b"8\r\n12345678\r\n0\r\n\r\n")
    [response] = responses(transport)
    assert response.status == 413 and transport.disconnecting


def test_chunked_request_body_is_decoded() -> None:
    channel, transport, _ = make(Echo())
    channel.dataReceived(
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
    )
    [response] = responses(transport)
    assert response.body == b"/c:abcdefg"


def test_expect_100_continue_is_answered_before_the_body() -> None:
    channel, transport, _ = make(Echo())
    channel.dataReceived(
        b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.dataReceived(b"xyz")
    assert transport.value().count(b"HTTP/1.1 ") == 2
    assert transport.value().endswith(b"/u:xyz")


def test_expect_100_continue_with_too_large_body_gets_413_not_100() -> None:
    channel, transport, _ = make(Echo(), maxBodySize=10)
    channel.dataReceived(
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 ")


def test_render_error_gives_500_and_keeps_serving() -> None:
    channel, transport, _ = make(Boom())
    channel.dataReceived(GET)
    [response] = responses(transport)
    assert response.status == 500
    assert not transport.disconnecting


def test_not_done_yet_chunked_in_11_and_close_delimited_in_10() -> None:
    later = Later()
    channel, transport, _ = make(later)
    channel.dataReceived(GET)
    request = later.pending.pop()
    request.write(b"abc")
    request.write(b"de")
    request.finish()
    [response] = responses(transport)
    assert response.headers[b"transfer-encoding"] == b"chunked"
    assert response.body == b"abcde"
    assert not transport.disconnecting

    channel, transport, _ = make(later)
    channel.dataReceived(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    request = later.pending.pop()
    request.write(b"abc")
    request.finish()
    assert transport.value().endswith(b"\r\n\r\nabc")
    assert b"Connection: close" in transport.value()
    assert transport.disconnecting


def test_content_length_set_by_resource_is_used_when_streaming() -> None:
    later = Later()
    channel, transport, _ = make(later)
    channel.dataReceived(GET)
    request = later.pending.pop()
    request.setHeader("Content-Length", "3")
    request.write(b"abc")
    request.finish()
    [response] = responses(transport)
    assert response.headers[b"content-length"] == b"3"
    assert b"transfer-encoding" not in response.headers


def test_pipelined_requests_wait_for_the_response_in_progress() -> None:
    later = Later()
    channel, transport, _ = make(later, maxPipelined=3)
    channel.dataReceived(GET)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA")
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nB")
    assert transport.value() == b""
    assert transport.producerState == "producing"
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nC")
    assert transport.producerState == "paused"  # queue bound reached: stop reading
    first = later.pending.pop()
    first.write(b"first")
    assert transport.value().count(b"HTTP/1.1 ") == 1  # the others wait their turn
    first.finish()
    assert [r.body for r in responses(transport)] == [b"first", b"got A", b"got B", b"got C"]
    assert transport.producerState == "producing"


def test_notify_finish_callback_and_errback() -> None:
    later = Later()
    channel, transport, _ = make(later)
    channel.dataReceived(GET)
    request = later.pending.pop()
    done: list[Any] = []
    request.notifyFinish().addCallback(done.append)
    request.finish()
    assert done == [None]

    channel.dataReceived(GET)
    request = later.pending.pop()
    failed: list[Any] = []
    request.notifyFinish().addErrback(failed.append)
    disconnect(channel)
    assert len(failed) == 1 and isinstance(failed[0], BaseException)
    request.write(b"ignored after disconnect")
    request.finish()


def test_header_timeout_answers_408_and_closes() -> None:
    channel, transport, clock = make(headerTimeout=0.5)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
    clock.advance(0.3)
    assert transport.value() == b""
    for _ in range(10):
        clock.advance(0.125)
    [response] = responses(transport)
    assert response.status == 408 and transport.disconnecting


def test_idle_connection_closes_silently_after_keep_alive_timeout() -> None:
    channel, transport, clock = make(keepAliveTimeout=2.0, headerTimeout=1.0)
    channel.dataReceived(GET)
    transport.clear()
    for _ in range(4):
        clock.advance(0.25)  # past the header timeout: not applied between requests
    assert not transport.disconnecting
    for _ in range(8):
        clock.advance(0.25)
    assert transport.disconnecting and transport.value() == b""


def test_silent_new_connection_closes_after_header_timeout() -> None:
    channel, transport, clock = make(headerTimeout=1.0)
    for _ in range(12):
        clock.advance(0.25)
    assert transport.disconnecting and transport.value() == b""


def test_no_timeout_while_a_response_is_in_progress() -> None:
    later = Later()
    channel, transport, clock = make(later, headerTimeout=0.5, keepAliveTimeout=0.5)
    channel.dataReceived(GET)
    for _ in range(20):
        clock.advance(0.25)
    assert not transport.disconnecting


def test_drain_answers_a_request_sent_within_the_grace_with_connection_close() -> None:
    # A keep-alive client in a tight loop is "idle" for microseconds between requests:
    # closing then would lose the request it is sending.
    channel, transport, clock = make(drainIdleTimeout=1.0)
    channel.dataReceived(GET)
    channel.connectionDraining()
    assert not transport.disconnecting
    clock.advance(0.5)
    transport.clear()
    channel.dataReceived(GET)
    [response] = responses(transport)
    assert response.status == 200 and response.headers[b"connection"] == b"close"
    assert transport.disconnecting


def test_drain_closes_a_connection_that_stays_idle_for_the_grace() -> None:
    channel, transport, clock = make(drainIdleTimeout=1.0)
    channel.dataReceived(GET)
    channel.connectionDraining()
    clock.advance(0.5)
    assert not transport.disconnecting
    for _ in range(8):
        clock.advance(0.25)
    assert transport.disconnecting


def test_drain_closes_a_long_idle_connection_at_once() -> None:
    channel, transport, clock = make(drainIdleTimeout=1.0)
    channel.dataReceived(GET)
    for _ in range(8):
        clock.advance(0.25)
    assert not transport.disconnecting  # keep-alive: 75 s
    channel.connectionDraining()
    assert transport.disconnecting


def test_drain_mid_request_finishes_it_with_connection_close() -> None:
    channel, transport, _ = make()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
    channel.connectionDraining()
    assert not transport.disconnecting
    channel.dataReceived(b"\r\n")
    [response] = responses(transport)
    assert response.status == 200 and response.headers[b"connection"] == b"close"
    assert transport.disconnecting


def test_drain_during_response_answers_queued_requests_then_closes() -> None:
    later = Later()
    channel, transport, _ = make(later)
    channel.dataReceived(GET + b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nZ")
    channel.connectionDraining()
    later.pending.pop().finish()
    first, second = responses(transport)
    assert b"connection" not in first.headers
    assert second.body == b"got Z" and second.headers[b"connection"] == b"close"
    assert transport.disconnecting


def test_write_backpressure_pauses_reading() -> None:
    channel, transport, _ = make()
    channel.pause_writing()
    assert transport.producerState == "paused"
    channel.resume_writing()
    assert transport.producerState == "producing"


def test_upgrade_request_is_answered_then_closed() -> None:
    channel, transport, _ = make()
    channel.dataReceived(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        b"\x81\x00junk"
    )
    [response] = responses(transport)
    assert response.status == 200 and response.headers[b"connection"] == b"close"
    assert transport.disconnecting


def test_site_pickles_without_runtime_state() -> None:
    channel, _, _ = make()
    site = channel.factory
    assert site._timeouts is not None
    copy = pickle.loads(pickle.dumps(site))
    assert copy._timeouts is None and type(copy.resource) is Hello
    assert "clock" not in copy.__dict__ and "_timeouts" not in copy.__dict__
