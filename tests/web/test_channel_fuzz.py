"""Hypothesis fuzz of the request path: random, truncated and mutated requests never crash the
protocol, whatever the chunking, and a server keeps serving after receiving them."""

from __future__ import annotations

import logging
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forkd.testing import Clock, StringTransport, connect, disconnect
from forkd.web import server
from forkd.web.resource import NOT_DONE_YET, Resource
from tests.webserving import connect as connect_socket
from tests.webserving import get, serving

VALID = (
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    b"2\r\nhi\r\n0\r\n\r\n"
    b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
)


class Any_(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/later":
            request.write(b"part")
            return NOT_DONE_YET
        return b"ok"

    def render_POST(self, request: Any) -> bytes:
        return request.content.read()

    render_PUT = render_POST


class Errors(logging.Handler):
    """Collects the error records forkd.web logs: the channel turns an exception raised in
    its own parser callbacks into a 400 *and* an error log line, so a 400 alone would hide
    a bug in forkd; the log line is what this fuzz's oracle fails on."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def feed(data: bytes, cuts: list[int]) -> StringTransport:
    errors = Errors()
    logger = logging.getLogger("forkd.web")
    logger.addHandler(errors)
    try:
        transport = feed_site(data, cuts)
    finally:
        logger.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]
    return transport


def feed_site(data: bytes, cuts: list[int]) -> StringTransport:
    site = server.Site(Any_())
    site.clock = Clock()
    site.maxHeaderSize = 512
    site.maxBodySize = 64
    transport = StringTransport()
    channel = connect(site, transport)
    start = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        channel.dataReceived(data[start:cut])
        start = cut
    site.clock.advance(100)  # every timeout fires
    disconnect(channel)
    return transport


def check(transport: StringTransport) -> None:
    out = transport.value()
    assert out == b"" or out.startswith(b"HTTP/1.1 ")


fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8))
def test_random_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    check(feed(data, cuts))


@fuzz
@given(st.integers(min_value=0, max_value=len(VALID)), st.lists(st.integers(0), max_size=6))
def test_truncated_requests_never_crash(length: int, cuts: list[int]) -> None:
    check(feed(VALID[:length], cuts))


@fuzz
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.binary(min_size=0, max_size=3)),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.integers(0), max_size=6),
)
def test_mutated_requests_never_crash(edits: list[tuple[int, bytes]], cuts: list[int]) -> None:
    data = bytearray(VALID)
    for position, replacement in edits:
        data[position : position + 1] = replacement
    check(feed(bytes(data), cuts))


def test_garbage_over_a_real_socket_leaves_the_server_serving(caplog: Any) -> None:
    samples = st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(VALID)).map(lambda n: VALID[:n]),
    )
    with serving(server.Site(Any_())) as served:

        @settings(max_examples=60, deadline=None)
        @given(samples)
        def send(data: bytes) -> None:
            with connect_socket(served.port, timeout=2) as sock:
                sock.sendall(data)

        with caplog.at_level(logging.ERROR, logger="forkd.web"):
            send()
        assert get(served.port, b"/").body == b"ok"
        assert served.errors == []
        assert not [r for r in caplog.records if r.name == "forkd.web"]
