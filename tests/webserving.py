"""Test helpers: serve a forkd.web Site on a loopback port, and a small HTTP client.

    with serving(server.Site(Hello())) as served:
        status, headers, body = get(served.port, b"/")

`serving` runs an event loop (uvloop by default, or stdlib asyncio) in a background thread
with `loop.create_server(protocol_factory(site), "127.0.0.1", 0)`. The client helpers speak
raw bytes over sockets so tests control exactly what goes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from forkd.protocol import protocol_factory, stats

TIMEOUT = 10.0


class ServedSite:
    """A Site listening on 127.0.0.1:<free port> in a thread of its own."""

    def __init__(self, site: Any, loop: str = "uvloop") -> None:
        self.site = site
        self.loop_kind = loop
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.errors: list[dict[str, Any]] = []  # what reached the loop's exception handler
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.loop_kind == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        self.loop = loop
        loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        try:
            self._server = loop.run_until_complete(
                loop.create_server(protocol_factory(self.site), "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # surfaced in start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        self._server.close()
        for protocol in list(stats.open):  # this site's connections only: other loops own the rest
            transport = getattr(protocol, "transport", None)
            inner = getattr(transport, "_transport", None)
            if inner is not None and getattr(protocol, "factory", None) is self.site:
                inner.abort()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    def start(self) -> ServedSite:
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError("server thread did not start")
        if self._error is not None:
            raise self._error
        return self

    def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` in the server's loop thread and return its result."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(_call(function), self.loop)
        return future.result(TIMEOUT)

    def stop(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(TIMEOUT)


async def _call(function: Callable[[], Any]) -> Any:
    return function()


@contextlib.contextmanager
def serving(site: Any, loop: str = "uvloop") -> Iterator[ServedSite]:
    served = ServedSite(site, loop).start()
    try:
        yield served
    finally:
        served.stop()


def connect(port: int, timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


class Response:
    """A parsed HTTP response: status, headers (lower-case names), body."""

    def __init__(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.status = status
        self.reason = reason
        self.headerList = headers
        self.headers = {name.lower(): value for name, value in headers}
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers!r} {self.body[:60]!r}>"


class ResponseReader:
    """Reads successive responses from one connection (keep-alive, pipelining)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed mid-line: {self.buffer!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError("connection closed mid-body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read(self, head: bool = False) -> Response:
        """The next response; `head` says it answers a HEAD request (no body)."""
        while True:
            version, status, reason = (self._line().split(b" ", 2) + [b""])[:3]
            headers = []
            while True:
                line = self._line()
                if not line:
                    break
                name, _, value = line.partition(b":")
                headers.append((name.strip(), value.strip()))
            code = int(status)
            if code != 100:
                break
        lookup = {n.lower(): v for n, v in headers}
        if head or code in (204, 304):
            body = b""
        elif b"content-length" in lookup:
            body = self._exactly(int(lookup[b"content-length"]))
        elif lookup.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._exactly(size)
                self._line()
        else:
            while self._fill():
                pass
            body, self.buffer = self.buffer, b""
        return Response(code, reason, headers, body)

    def at_eof(self, timeout: float = TIMEOUT) -> bool:
        """Whether the server closes the connection (with nothing more sent) in time."""
        self.sock.settimeout(timeout)
        try:
            return not self.buffer and not self._fill()
        except ConnectionResetError:
            return not self.buffer


def request(port: int, data: bytes, head: bool = False) -> Response:
    """Send raw request bytes on a new connection and read one response."""
    with connect(port) as sock:
        sock.sendall(data)
        return ResponseReader(sock).read(head=head)


def get(port: int, path: bytes = b"/", headers: bytes = b"", method: bytes = b"GET") -> Response:
    data = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n" % (
        method,
        path,
        headers,
    )
    return request(port, data, head=method == b"HEAD")


def json_from(port: int, path: str = "/") -> Any:
    """GET http://127.0.0.1:PORT/PATH as JSON, or None while nothing answers there."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


@contextlib.contextmanager
def forkd_serve(
    directory: Any, *args: str, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
) -> Iterator[Any]:
    """`forkd serve ARGS` in the foreground, run in `directory`, for the length of a
    `with` block; leaving sends TERM and asserts it stopped with exit 0."""
    import signal
    import subprocess

    from forkd.testing import forkd_command, forkd_env

    process = subprocess.Popen(
        forkd_command("serve", *args),
        cwd=directory,
        env=env or forkd_env(),
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        text=True,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, process.stderr.read() if process.stderr else ""


def count_sendfile(monkeypatch: Any) -> list[int]:
    """The byte counts of every Request.sendfile call from now on (the test's own
    monkeypatch undoes it): what proves a body went zero-copy, not read in pieces."""
    from forkd.web.request import Request

    sent: list[int] = []
    real = Request.sendfile

    def counting(self: Any, file: Any, offset: int, count: int) -> None:
        sent.append(count)
        real(self, file, offset, count)

    monkeypatch.setattr(Request, "sendfile", counting)
    return sent
