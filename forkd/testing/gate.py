"""A gate for tests: WSGI requests that block in a real worker until the test lets them on.

    with Gate(tmp_path / "gate.sock") as gate:
        env = dict(forkd_env(), FORKD_GATE=gate.path)
        with forkd_serve(tmp_path, "forkd.testing.gate:application", ..., env=env):
            ...                               # GET /gate blocks in a thread of the pool
            gate.wait_held(2)                 # two requests are running, held at the gate
            gate.release()                    # and now they answer

The test holds a `Gate`: a UNIX socket it listens on, served by a thread of its own. The
WSGI `application` below (run by `forkd serve forkd.testing.gate:application` with
FORKD_GATE naming that socket) connects to it for each request to `/gate`, says which
worker holds it, and waits for the gate to send it on. So a test knows exactly how many
requests are running, in which worker, and releases them when it chooses: no sleeps. A
gate that closes releases everything it holds, so nothing hangs when a test fails.

The application's other paths: `/pid` answers the worker's pid at once; `/bytes?N`
answers N bytes (64 KiB pieces from a generator, with a Content-Length).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from forkd.testing.waiting import wait_for

__all__ = ["Gate", "application"]

PIECE = 64 * 1024


class Gate:
    """The test's side: who is held, and letting them on."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(128)
        self._listener.settimeout(0.05)  # how often the thread sees that the gate closed
        self._lock = threading.Lock()
        self._held: list[tuple[socket.socket, int]] = []
        self._open = False
        self._closed = False
        self.passed = 0  # requests that came to the gate, ever
        self._thread = threading.Thread(target=self._serve, name="gate", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                pid = int(conn.recv(64).split()[0])
            except (OSError, ValueError, IndexError):
                conn.close()
                continue
            with self._lock:
                self.passed += 1
                if self._open or self._closed:
                    conn.close()
                else:
                    self._held.append((conn, pid))

    def held(self) -> list[int]:
        """The worker pid of each request held at the gate now, oldest first."""
        with self._lock:
            return [pid for _, pid in self._held]

    def wait_held(self, count: int, timeout: float = 15.0) -> list[int]:
        """Wait until `count` requests (or more) are held; their pids."""
        return list(
            wait_for(
                lambda: len(self.held()) >= count and self.held(),
                timeout,
                message=lambda: f"{count} requests at the gate (held: {self.held()})",
            )
        )

    def release(self, count: int | None = None) -> None:
        """Let the `count` oldest held requests on (all of them by default)."""
        with self._lock:
            count = len(self._held) if count is None else count
            going, self._held = self._held[:count], self._held[count:]
        for conn, _ in going:
            conn.close()  # the application's recv sees EOF: it answers

    def open(self) -> None:
        """Release everyone, and let every later request straight through."""
        with self._lock:
            self._open = True
        self.release()

    def close(self) -> None:
        self._closed = True
        self.open()
        self._listener.close()
        self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _wait_at_gate() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(os.environ["FORKD_GATE"])
        sock.sendall(b"%d\n" % os.getpid())
        while sock.recv(64):  # EOF: the test let this request on
            pass


def _pieces(size: int) -> Iterator[bytes]:
    while size > 0:
        yield b"x" * min(size, PIECE)  # a new object each time, as a real body would be
        size -= PIECE


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI side (see the module docstring)."""
    path = environ["PATH_INFO"]
    if path == "/bytes":
        size = int(environ.get("QUERY_STRING") or 0)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(size))])
        return _pieces(size)
    if path == "/gate":
        _wait_at_gate()
    elif path != "/pid":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such path\n"]
    body = b"%d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def socket_path(directory: str | os.PathLike[str]) -> str:
    """A gate path under `directory` short enough for AF_UNIX (108 bytes)."""
    path = Path(directory) / "gate.sock"
    return str(path) if len(str(path)) < 100 else f"/tmp/forkd-gate-{os.getpid()}.sock"
