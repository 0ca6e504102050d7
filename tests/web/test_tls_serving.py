"""forkd.web over TLS in one process: a TCPPort with a ServerContextFactory, served by
`port.serve(loop)` as a worker serves it, on uvloop and on the stdlib loop, talked to by
real TLS clients on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forkd.ports import TCPPort
from forkd.protocol import stats
from forkd.testing import wait_for
from forkd.tls import HTTP_ALPN, ServerContextFactory
from forkd.web import server
from forkd.web.asgi import ASGIResource
from forkd.web.wsgi import WSGIResource
from tests.tlscerts import Certificates, closed_by_peer, make_certificates, tls_connect, tls_get
from tests.webserving import Response, ResponseReader, get

TIMEOUT = 10.0
STALL = 1.5  # seconds a slow client stops reading


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: Any) -> str:
    return str(request.param)


@contextlib.contextmanager
def served(
    port: TCPPort, loop_kind: str, send_buffer: int = 0
) -> Iterator[asyncio.AbstractEventLoop]:
    """`port` bound on 127.0.0.1 and served on a loop (yielded) of its own thread, as a
    worker does (its connections with a kernel send buffer of `send_buffer` bytes, if
    given)."""
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    port.startListening()
    if send_buffer:
        assert port.socket is not None  # accepted sockets inherit it
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            holder["server"] = loop.run_until_complete(port.serve(loop))
        except BaseException as error:
            holder["error"] = error
            started.set()
            return
        started.set()
        loop.run_forever()
        holder["server"].close()
        for protocol in list(stats.open):
            if getattr(protocol, "factory", None) is port.factory:
                with contextlib.suppress(Exception):
                    protocol.transport.abortConnection()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert started.wait(TIMEOUT), "the loop did not start"
        if "error" in holder:
            raise holder["error"]
        yield loop
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(TIMEOUT)
        port.stopListening()


def scheme_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"scheme": environ["wsgi.url_scheme"]}).encode()]


async def scheme_asgi(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps({"scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def tls_site_port(certs: Certificates, site: Any, **tls: Any) -> TCPPort:
    context_factory = ServerContextFactory(certs.cert, certs.key, alpn=HTTP_ALPN, **tls)
    return TCPPort(0, site, interface="127.0.0.1", contextFactory=context_factory)


def body_of(response: Response) -> Any:
    assert response.status == 200, response
    return json.loads(response.body)


@pytest.mark.parametrize(
    "resource",
    [lambda: WSGIResource(scheme_wsgi, threads=1), lambda: ASGIResource(scheme_asgi)],
    ids=["wsgi", "asgi"],
)
def test_an_application_over_tls_is_told_https_and_alpn_says_http11(
    certs: Certificates, loop_kind: str, resource: Any
) -> None:
    port = tls_site_port(certs, server.Site(resource()))
    with served(port, loop_kind):
        alpn, response = tls_get(port.port, certs.client_context(["h2", "http/1.1"]))
    assert alpn == "http/1.1"
    assert body_of(response) == {"scheme": "https"}


def test_the_same_application_in_plain_is_told_http(loop_kind: str) -> None:
    port = TCPPort(0, server.Site(WSGIResource(scheme_wsgi, 1)), interface="127.0.0.1")
    with served(port, loop_kind):
        assert body_of(get(port.port)) == {"scheme": "http"}


def test_a_stalled_handshake_is_dropped_after_its_timeout(
    certs: Certificates, loop_kind: str
) -> None:
    class Quick(ServerContextFactory):
        handshakeTimeout = 0.3

    site = server.Site(WSGIResource(scheme_wsgi, 1))
    port = TCPPort(0, site, interface="127.0.0.1", contextFactory=Quick(certs.cert, certs.key))
    with served(port, loop_kind), socket.create_connection(("127.0.0.1", port.port)) as sock:
        # connected, never says hello: without the timeout it would hold on for 60 s
        assert closed_by_peer(sock, timeout=5.0)


def test_garbage_then_a_real_client(certs: Certificates, loop_kind: str) -> None:
    port = tls_site_port(certs, server.Site(WSGIResource(scheme_wsgi, 1)))
    with served(port, loop_kind):
        with socket.create_connection(("127.0.0.1", port.port)) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP on the TLS port
            assert closed_by_peer(plain)
        with socket.create_connection(("127.0.0.1", port.port)) as garbage:
            garbage.sendall(b"\x16\x03\x01\x00\x05hello" + bytes(range(256)))
            assert closed_by_peer(garbage)
        _alpn, response = tls_get(port.port, certs.client_context())
    assert body_of(response) == {"scheme": "https"}


def refused_handshake(port: int, context: ssl.SSLContext) -> bool:
    """Whether the server refuses the client's TLS: at the handshake, or (TLS 1.3, where
    the client finishes first) by closing before any answer."""
    try:
        with tls_connect(port, context) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(65536) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_ca_certs_require_a_client_certificate_from_that_ca(
    certs: Certificates, loop_kind: str
) -> None:
    port = tls_site_port(certs, server.Site(WSGIResource(scheme_wsgi, 1)), ca_certs=certs.ca)
    with served(port, loop_kind):
        assert refused_handshake(port.port, certs.client_context())
        with_certificate = certs.client_context()
        certs.client.configure_cert(with_certificate)
        assert not refused_handshake(port.port, with_certificate)
        _alpn, response = tls_get(port.port, with_certificate)
    assert body_of(response) == {"scheme": "https"}


@pytest.mark.parametrize(
    "left",
    [None, 20_000],
    ids=["most of it left in the TLS layer", "the tail left below it, in the loop and kernel"],
)
def test_a_client_that_stalls_at_the_end_of_a_response_still_gets_all_of_it(
    certs: Certificates, tmp_path: Path, left: int | None
) -> None:
    """A client that pauses reading after the server closed loses nothing of a
    `Connection: close` response: not to the loop's shutdown timeout (which times the
    flush and close_notify as one) while it is shorter than the pause, and not to
    forkd.tlsclose's early abort, which waits until the peer's kernel has it all."""
    from forkd.web.static import File

    class Patient(ServerContextFactory):
        shutdownTimeout = STALL * 2

    (tmp_path / "www").mkdir()
    data = os.urandom(400_000)
    (tmp_path / "www" / "blob.bin").write_bytes(data)
    site = server.Site(File(str(tmp_path / "www")))
    port = TCPPort(0, site, interface="127.0.0.1", contextFactory=Patient(certs.cert, certs.key))
    with served(port, "uvloop", send_buffer=4096):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little
        raw.connect(("127.0.0.1", port.port))
        with certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET /blob.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            received = sock.recv(4096)
            wait_for(lambda: closing(site), message="the server to have written the response")
            while left is not None and len(received) < len(data) - left:
                received += sock.recv(4096)
            assert not received.endswith(data)  # some is still on its way
            time.sleep(STALL)  # the client stalls: the point of the test, not a synchronisation
            while chunk := sock.recv(65536):
                received += chunk
    assert received.endswith(data)


def test_a_tls_close_waits_as_long_as_a_plain_write_may_stall() -> None:
    assert ServerContextFactory.shutdownTimeout >= server.Site.sendTimeout


def closing(site: server.Site) -> bool:
    """Whether the site's one connection has been closed by the server (loseConnection),
    with or without its output flushed."""
    channels = [p for p in stats.open if p.factory is site]
    return len(channels) == 1 and channels[0].transport.disconnecting


def test_an_idle_client_that_never_reads_does_not_hold_a_closing_connection(
    certs: Certificates, loop_kind: str
) -> None:
    """A `requests` pool's idle connection: the server's close_notify is never answered,
    yet the connection (and a draining worker with it) goes as soon as all is delivered,
    not after the 60 s shutdown timeout; the client still got a clean TLS close."""
    site = server.Site(WSGIResource(scheme_wsgi, 1))
    port = tls_site_port(certs, site)
    with served(port, loop_kind) as loop:
        raw = socket.create_connection(("127.0.0.1", port.port), timeout=TIMEOUT)
        context = certs.client_context()
        with context.wrap_socket(
            raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False
        ) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert body_of(ResponseReader(sock).read()) == {"scheme": "https"}
            (channel,) = [p for p in stats.open if p.factory is site]
            loop.call_soon_threadsafe(channel.connectionDraining)
            wait_for(lambda: channel not in stats.open, 5.0, message="the idle close")
            assert sock.recv(65536) == b""  # close_notify, not a ragged EOF (SSLEOFError)
