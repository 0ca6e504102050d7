"""Load for end-to-end tests: HTTP clients in threads that count what they saw."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from typing import Any


class KeepAliveLoad:
    """Clients that each reuse one HTTP/1.1 connection for request after request, as a
    pooled client does, reconnecting only when the server said `Connection: close`
    (or, with `close=True`, that open a new connection for every request).
    `expect(body)` says whether a 200's body is right; with `keep_bodies`, the distinct
    bodies are kept in `bodies`."""

    def __init__(
        self,
        port: int,
        clients: int = 8,
        limit: int = 200_000,
        path: str = "/",
        expect: Callable[[bytes], bool] = lambda body: body == b"Hello, world!\n",
        close: bool = False,
        keep_bodies: bool = False,
    ) -> None:
        self.port = port
        self.limit = limit
        self.path = path
        self.expect = expect
        self.close = close
        self.keep_bodies = keep_bodies  # the distinct bodies seen, in `bodies`
        self.bodies: set[bytes] = set()
        self.ok = 0
        self.reconnects = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = 0
        while not self._stop.is_set() and sent < self.limit:
            sent += 1
            try:
                headers = {"Connection": "close"} if self.close else {}
                conn.request("GET", self.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or not self.expect(body):
                    self.errors.append(f"status {response.status} body {body[:40]!r}")
                else:
                    self.ok += 1
                    if self.keep_bodies:
                        self.bodies.add(body)
                if response.will_close:
                    self.reconnects += not self.close
                    conn.close()
            except Exception as error:  # every kind of failure is a dropped request
                self.errors.append(f"{type(error).__name__}: {error} at {time.time():.3f}")
                conn.close()
        conn.close()

    def __enter__(self) -> KeepAliveLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
