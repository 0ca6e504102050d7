"""Zero dropped requests for keep-alive HTTP clients across reloads and restarts.

nginx drops every idle keep-alive connection on reload, and a client that was sending its
next request on one sees an error. forkd's draining workers answer that request with
`Connection: close` instead. Real master, real workers, real HTTP clients on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import pathlib
import threading
import time
from typing import Any

import pytest

from forkd.app import Application
from forkd.ports import TCPPort
from forkd.testing import RunningForkd, forkctl, free_port, wait_for
from forkd.web import server
from forkd.web.hello import Hello

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


class KeepAliveLoad:
    """Clients that each reuse one HTTP/1.1 connection for request after request, as a
    pooled client does, reconnecting only when the server said `Connection: close`."""

    def __init__(self, port: int, clients: int = 8, limit: int = 200_000) -> None:
        self.port = port
        self.limit = limit
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
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or body != b"Hello, world!\n":
                    self.errors.append(f"status {response.status} body {body[:40]!r}")
                else:
                    self.ok += 1
                if response.will_close:
                    self.reconnects += 1
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


def test_keep_alive_clients_lose_nothing_across_reloads_and_restarts(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    app = Application("hello")
    app.addPort(TCPPort(port, server.Site(Hello()), interface="127.0.0.1"))
    app.tapfile = str(tmp_path / "hello.tap")
    app.save()
    ctl = str(tmp_path / "hello.ctl")
    with RunningForkd(app.tapfile, workers=2) as forkd:
        workers = forkd.wait_workers(2)
        with KeepAliveLoad(port) as load:
            wait_for(lambda: load.ok > 200, message="load running")
            for command in ["reload", "restart"] * 3:
                before = load.reconnects
                done = forkctl(ctl, command)
                assert done.returncode == 0, done.stderr + forkd.log()[-3000:]
                workers = forkd.wait_workers(2, exclude=workers, timeout=30)
                # every client was moved to the new generation by a Connection: close
                wait_for(
                    lambda b=before: load.reconnects >= b + 8,
                    timeout=30,
                    message="clients told to reconnect",
                )
            served = load.ok
            wait_for(lambda: load.ok > served + 200, message="load after the last restart")
        assert load.errors == [], (load.errors[:5], forkd.log()[-6000:])
        print(
            f"\nkeep-alive load across 3 reloads + 3 restarts: {load.ok} requests, "
            f"{load.reconnects} graceful reconnects, {len(load.errors)} failed"
        )
