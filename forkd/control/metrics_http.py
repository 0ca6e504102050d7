"""`forkd start --metrics HOST:PORT`: /metrics, /livez and /readyz, served by the master.

The master answers, not a worker, because the master is what knows every worker (and
outlives them), and an answer from it proves its loop runs: `/livez` is that proof.
`/readyz` is 200 while the master is running with a ready worker of the serving generation
and no stop pending (`--shutdown-delay` turns it 503 at the first SIGTERM), else 503: what
a Kubernetes readiness probe or a load balancer's health check wants. `/metrics` is the
Prometheus text format (forkd.supervisor.metrics).

HTTP/1.1 without keep-alive: one small request in, one response out, then close, since a
probe or a scrape every few seconds gains nothing from holding connections in the master.
"""

from __future__ import annotations

from typing import Any

from forkd.protocol import Factory, Protocol

MAX_REQUEST = 8192  # bytes of request head; a scraper's is a few hundred
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"  # the Prometheus text format


class MetricsHTTP(Protocol):
    """One request: read its head, answer, close."""

    master: Any = None  # set by forkd.control.masterports before makeConnection

    def connectionMade(self) -> None:
        self._head: bytes | None = b""  # None once answered

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            return
        head = self._head = self._head + data
        if b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > MAX_REQUEST:
                self._answer(431, b"request header too large\n")
            return
        line = head.split(b"\n", 1)[0].strip()
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._answer(400, b"bad request\n")
            return
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self._answer(405, b"GET or HEAD\n", head=False, extra=b"Allow: GET, HEAD\r\n")
            return
        bare = method == b"HEAD"
        if target == b"/metrics":
            self._answer(200, self.master.metrics_exposition(), bare, CONTENT_TYPE)
        elif target == b"/livez":
            self._answer(200, b"ok\n", bare)
        elif target == b"/readyz":
            ready = self.master.ready()
            self._answer(200 if ready else 503, b"ready\n" if ready else b"not ready\n", bare)
        else:
            self._answer(404, b"not found: try /metrics, /livez or /readyz\n", bare)

    def _answer(
        self,
        code: int,
        body: bytes,
        head: bool = False,
        content_type: bytes = b"text/plain; charset=utf-8",
        extra: bytes = b"",
    ) -> None:
        self._head = None
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
        reason |= {431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n%s"
            % (code, reason[code], content_type, len(body), extra, b"" if head else body)
        )
        self.transport.loseConnection()


class MetricsFactory(Factory):
    """The master-served factory of the --metrics port (never part of the application)."""

    protocol = MetricsHTTP
    servedByMaster = True
