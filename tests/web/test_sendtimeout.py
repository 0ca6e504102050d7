"""Site.sendTimeout (nginx's send_timeout): a peer that stops reading is cut, a slow one is not.

Fake-clock tests drive HTTPChannel on transports whose write buffer is what a fake peer has
not taken; real-socket tests fill the kernel's buffers with a large file (zero copy) or a
large body (the transport's buffer) and check the connection is aborted while other clients
are served, and that a slow reader that keeps reading gets the whole file.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from forkd.testing import Clock, StringTransport, connect, wait_for
from forkd.web import outqueue, server, static
from forkd.web.outqueue import kernel_queue, unsent
from forkd.web.resource import NOT_DONE_YET, Resource
from tests.webserving import ResponseReader, get, serving

BIG = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than loopback's kernel buffers hold
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class PeerTransport(StringTransport):
    """A StringTransport whose write buffer is whatever the fake peer has not taken."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = 0

    def getWriteBufferSize(self) -> int:
        return len(self.io) - self.taken

    def take(self, size: int) -> None:
        self.taken = min(len(self.io), self.taken + size)


class Big(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return BIG[: 1024 * 1024]


class Streaming(Resource):
    """Keeps the request open; the test writes to it (ignoring backpressure, on purpose)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


def make(
    resource: Resource, transport: StringTransport | None = None, **settings: Any
) -> tuple[Any, Any, Clock]:
    site = server.Site(resource)
    site.clock = clock = Clock()
    site.sendTimeout = 1.0  # resolution 0.25 s
    for name, value in settings.items():
        setattr(site, name, value)
    transport = transport if transport is not None else PeerTransport()
    return connect(site, transport), transport, clock


def tick(clock: Clock, count: int = 1) -> None:
    for _ in range(count):
        clock.advance(0.25)


# -- the fake clock ------------------------------------------------------------------------
def test_peer_that_takes_nothing_is_aborted_after_send_timeout() -> None:
    channel, transport, clock = make(Big())
    channel.dataReceived(GET)
    transport.take(1000)  # the kernel took a little, then nothing more
    tick(clock, 4)  # 1.0 s: the stall was first seen at 0.25 s
    assert not transport.aborted
    tick(clock, 2)
    assert transport.aborted


def test_progress_restarts_the_clock() -> None:
    channel, transport, clock = make(Big())
    channel.dataReceived(GET)
    for _ in range(20):  # 5 s, five send timeouts, taking 100 bytes a tick
        transport.take(100)
        tick(clock)
    assert not transport.aborted
    tick(clock, 6)
    assert transport.aborted


def test_a_response_waiting_to_be_flushed_before_close_is_aborted() -> None:
    channel, transport, clock = make(Big())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert transport.disconnecting and not transport.aborted  # close after the flush...
    tick(clock, 6)
    assert transport.aborted  # ...which never comes


def test_an_application_writing_into_a_stalled_peer_is_aborted() -> None:
    streaming = Streaming()
    channel, transport, clock = make(streaming)
    channel.dataReceived(GET)
    [request] = streaming.requests
    for _ in range(6):  # the buffer grows only by what we write: no progress
        request.write(b"x" * 1000)
        tick(clock)
    assert transport.aborted


def test_an_application_writing_faster_than_a_reading_peer_is_not_cut() -> None:
    streaming = Streaming()
    channel, transport, clock = make(streaming)
    channel.dataReceived(GET)
    [request] = streaming.requests
    for _ in range(20):
        request.write(b"x" * 1000)
        transport.take(300)  # the buffer grows, yet the peer is reading
        tick(clock)
    assert not transport.aborted
    request.finish()
    tick(clock, 6)
    assert transport.aborted


def test_growth_we_do_not_count_gets_the_benefit_of_the_doubt() -> None:
    channel, transport, clock = make(Big())
    for _ in range(12):  # pipelined fast-path responses, none of them taken
        channel.dataReceived(GET)
        tick(clock)
    assert not transport.aborted
    tick(clock, 6)
    assert transport.aborted


def test_nothing_waiting_means_no_send_timeout() -> None:
    channel, transport, clock = make(Big(), keepAliveTimeout=100.0)
    channel.dataReceived(GET)
    transport.take(len(transport.io))
    tick(clock, 20)
    assert not transport.disconnecting


def test_fake_transports_without_a_buffer_size_never_time_out_sending() -> None:
    channel, transport, clock = make(Big(), StringTransport(), keepAliveTimeout=100.0)
    channel.dataReceived(GET)
    tick(clock, 20)
    assert not transport.disconnecting


def test_send_timeout_sets_the_sweep_resolution() -> None:
    site = server.Site(Big())
    site.sendTimeout = 0.5
    assert site.timeoutResolution() == 0.125
    assert server.Site.sendTimeout == 60.0


# -- measuring what waits ------------------------------------------------------------------
class _Parked:
    unsent = 500


def test_unsent_adds_a_parked_file_send_and_the_buffer() -> None:
    transport = PeerTransport()
    assert unsent(transport) == 0
    assert unsent(transport, _Parked()) == 500
    transport.write(b"x" * 30)
    assert unsent(transport, _Parked()) == 530
    assert unsent(StringTransport(), _Parked()) == 500


class _SocketTransport:
    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


@pytest.mark.skipif(outqueue._OUTQ is None, reason="SIOCOUTQ is Linux's")
def test_kernel_queue_is_what_the_peer_has_not_acknowledged() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(listener.getsockname())
        writer, _ = listener.accept()
        with reader, writer:
            writer.setblocking(False)
            sent = 0
            for _ in range(1000):
                try:
                    sent += writer.send(BIG[:65536])
                except BlockingIOError:
                    break
            assert 0 < kernel_queue(_SocketTransport(writer)) <= sent
            received = 0
            while received < sent:
                received += len(reader.recv(65536))
            wait_for(lambda: kernel_queue(_SocketTransport(writer)) == 0, message="the acks")
    assert kernel_queue(_SocketTransport(writer)) == 0  # closed: unknown, not an error
    assert kernel_queue(object()) == 0


# -- the half-close after an error (Transport.writeEOF) ------------------------------------
class HalfClosing(StringTransport):
    def __init__(self, sslcontext: Any = None) -> None:
        super().__init__()
        self.sslcontext = sslcontext
        self.eof = False

    def writeEOF(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sslcontext if name == "sslcontext" else default


def test_error_response_half_closes_and_lingers_then_aborts() -> None:
    channel, transport, clock = make(Big(), HalfClosing(), lingerTimeout=1.0)
    channel.dataReceived(b"BAD\0REQUEST\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert transport.eof and not transport.disconnecting
    channel.dataReceived(b"more of the upload, discarded")
    tick(clock, 6)
    assert transport.aborted


def test_error_response_over_tls_closes_without_half_close() -> None:
    channel, transport, _ = make(Big(), HalfClosing(sslcontext=object()))
    channel.dataReceived(b"BAD\0REQUEST\r\n\r\n")
    assert not transport.eof and transport.disconnecting and not transport.aborted


class RefusesUnread(Resource):
    """Streams its body, and answers at once without reading it (an upload refused)."""

    isLeaf = True
    streamsBody = True

    def render_POST(self, request: Any) -> bytes:
        request.setResponseCode(403)
        return b"not here\n"


def test_an_answer_before_its_streamed_body_is_in_half_closes_and_lingers() -> None:
    """Closing with the rest of the upload unread would reset the connection under the
    answer (the client, still sending, never reads it): half-close and discard instead."""
    channel, transport, clock = make(RefusesUnread(), HalfClosing(), lingerTimeout=1.0)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab")
    assert transport.value().startswith(b"HTTP/1.1 403 ")
    assert transport.eof and not transport.disconnecting
    channel.dataReceived(b"x" * 50000)  # the rest of the upload, discarded
    assert transport.value().count(b"HTTP/1.1") == 1
    tick(clock, 6)
    assert transport.aborted


def test_an_upload_refused_unread_still_gets_its_answer_over_a_socket() -> None:
    site = server.Site(RefusesUnread())
    site.maxBodySize = 64 << 20
    with serving(site) as served, socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.settimeout(10)
        size = 8 << 20  # more than the kernel buffers take while the server answers
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sock.sendall(b"x" * size)  # a reset here (EPIPE) is the bug
        response = ResponseReader(sock).read()
    assert response.status == 403 and response.body == b"not here\n"


# -- real sockets --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory: Any) -> Any:
    root = tmp_path_factory.mktemp("sendtimeout")
    (root / "big.bin").write_bytes(BIG)
    (root / "small.txt").write_bytes(b"small\n")
    return root


class BigBody(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return BIG


def _client(port: int) -> socket.socket:
    """A client with a small receive buffer (which also stops the kernel growing it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _drain(sock: socket.socket) -> int:
    """Read until the server's close; how many bytes came."""
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


def _connections(site: Any) -> Any:
    """The site's open HTTPChannels (call in the server's loop thread)."""
    return site._timeouts.connections if site._timeouts is not None else set()


def _open_connections(served: Any) -> int:
    return int(served.call(lambda: len(_connections(served.site))))


@pytest.mark.parametrize(
    ("loop", "what", "path"),
    [
        ("uvloop", "file", b"/big.bin"),
        ("asyncio", "file", b"/big.bin"),
        ("uvloop", "body", b"/"),
        ("asyncio", "body", b"/"),
    ],
)
def test_client_that_stops_reading_is_aborted_while_others_are_served(
    root: Any, loop: str, what: str, path: bytes
) -> None:
    site = server.Site(static.File(str(root)) if what == "file" else BigBody())
    site.sendTimeout = 0.5
    with serving(site, loop=loop) as served, _client(served.port) as stuck:
        started = time.monotonic()
        stuck.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        assert stuck.recv(16).startswith(b"HTTP/1.1 200")  # then it reads no more
        if what == "file":
            assert get(served.port, b"/small.txt").body == b"small\n"
        else:
            assert get(served.port, b"/").status == 200
        wait_for(lambda: _open_connections(served) == 0, message="the stuck connection's abort")
        assert time.monotonic() - started >= 0.5
        assert _drain(stuck) < len(BIG)


def _grow_send_buffers(site: Any) -> int:
    """Give the server's connections a 4 MiB send buffer, as busy links autotune to: the
    kernel then wakes our writer only after megabytes drain, long past the timeout."""
    channels = _connections(site)
    for channel in channels:
        sock = channel.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    return len(channels)


@pytest.mark.parametrize("send_buffer", ["default", "large"])
def test_slow_reader_that_keeps_reading_is_not_cut(root: Any, send_buffer: str) -> None:
    site = server.Site(static.File(str(root)))
    site.sendTimeout = 0.5
    with serving(site) as served, _client(served.port) as slow:
        if send_buffer == "large":
            wait_for(lambda: served.call(lambda: _grow_send_buffers(site)), message="the accept")
        slow.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = ResponseReader(slow)
        reader._line()
        waited = []
        deadline = time.monotonic() + 1.6  # three send timeouts and more
        while time.monotonic() < deadline:
            reader._fill()
            # Pacing the reader is what is under test here, not synchronisation.
            time.sleep(0.02)
            pending = served.call(lambda: [c._sendPending for c in _connections(site)])
            assert pending, "the server cut a reader that was reading"
            waited.append(pending[0])
        assert max(waited) > 0  # the server did wait on this reader: the timeout was armed
        assert len(reader.buffer) < len(BIG) // 2
        while b"\r\n\r\n" not in reader.buffer:
            reader._fill()
        reader.buffer = reader.buffer.partition(b"\r\n\r\n")[2]
        body = reader._exactly(len(BIG))
        assert body == BIG
