"""Site: the Factory that serves a resource tree over HTTP (twisted.web.server's names).

    from forkd.web import server, static
    site = server.Site(static.File("/var/www"))
    application.listenTCP(8080, site)
    site.resource.path = "/srv/other"      # the next request serves the other directory

The Site holds the root `resource` and the server's limits (class attributes, overridable
per instance); its protocol is forkd.web.channel.HTTPChannel. A Site pickles with its
resource tree and settings only: timers, the open access log and other run-time state are
left out by `__getstate__` and rebuilt in each worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from forkd.protocol import Factory
from forkd.web.channel import HTTPChannel
from forkd.web.logformat import DEFAULT_FORMAT
from forkd.web.proxy import TrustedProxies
from forkd.web.request import Request
from forkd.web.resource import NOT_DONE_YET, Resource, getChildForRequest
from forkd.web.timeouts import Timeouts

__all__ = ["NOT_DONE_YET", "Request", "Site", "HTTPChannel"]

_RUNTIME = ("_timeouts", "_accessLog", "clock", "_inflight")


class Site(Factory):
    """Serves `resource` (the root of a resource tree) over HTTP/1.x."""

    protocol = HTTPChannel
    requestFactory = Request

    #: URL plus header block, bytes (nginx: large_client_header_buffers 4 x 8k; Twisted 16k)
    maxHeaderSize = 64 * 1024
    #: request body, bytes (nginx client_max_body_size 1m)
    maxBodySize = 1024 * 1024  # 0: no limit
    #: seconds to receive a whole header block (nginx client_header_timeout 60s; we are
    #: stricter, as slowloris defences advise)
    headerTimeout = 10.0
    #: seconds a body may stall (nginx client_body_timeout)
    bodyTimeout = 60.0
    #: bytes per second a body must average once `bodyRateGrace` seconds have passed: a
    #: trickle that never stalls for `bodyTimeout` must not hold a connection and its
    #: buffer for ever (Apache mod_reqtimeout's MinRate; 0 turns it off)
    minBodyRate = 1024
    bodyRateGrace = 10.0
    #: body bytes kept in memory per request; more is spooled to a temporary file
    bodyBufferSize = 64 * 1024
    #: seconds an idle keep-alive connection is kept (nginx keepalive_timeout 75s)
    keepAliveTimeout = 75.0
    #: seconds output may wait on a peer that takes none of it before the connection is
    #: aborted (nginx send_timeout 60s); any progress restarts the clock
    sendTimeout = 60.0
    #: seconds a keep-alive connection may stay idle once its worker drains: a client that
    #: sends its next request within this grace gets it answered with `Connection: close`
    #: instead of finding the connection closed under its feet mid-send
    drainIdleTimeout = 1.0
    #: seconds input is read and discarded after an error response before closing
    lingerTimeout = 2.0
    #: pipelined requests held while a response is in progress before reading pauses
    maxPipelined = 16
    #: WebSocket (forkd.web.websocket): the largest message, bytes (0: no limit), as the
    #: websockets library's default
    websocketMaxSize = 1024 * 1024
    #: seconds between pings, and for the pong before the peer counts as gone (0: none)
    websocketPingInterval = 20.0
    websocketPingTimeout = 20.0
    #: seconds a draining worker's WebSockets are left to their application before the
    #: server closes them (1012 on a reload or restart, 1001 when the server stops)
    websocketDrain = 5.0
    websocketPerMessageDeflate = True
    #: a request line (method, target, version) longer than this is answered 414, a
    #: header field (`Name: value`) longer than `limitRequestFieldSize` or more fields than
    #: `limitRequestFields` 431: gunicorn's limit_request_* and its defaults (0: no limit
    #: but maxHeaderSize, within which fewer than gunicorn's most, 32768, fields fit)
    limitRequestLine = 4094
    limitRequestFields = 100
    limitRequestFieldSize = 8190
    #: requests in progress in one worker beyond which a new one is answered 503 with
    #: Retry-After before any resource sees it (uvicorn's --limit-concurrency; 0: off)
    limitConcurrency = 0
    #: the peers whose X-Forwarded-For / X-Forwarded-Proto / Forwarded are believed
    #: (forkd.web.proxy; gunicorn's and uvicorn's --forwarded-allow-ips)
    trustedProxies = TrustedProxies.parse("127.0.0.1")
    #: methods answered 405 (with Allow) rather than 501 when a resource lacks them
    supportedMethods = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS")

    #: the access log's file ("-": standard output); None: no access log
    logPath: str | None = None
    #: its line format (forkd.web.logformat): a gunicorn --access-logformat string, or
    #: "json" / "json:HEADER,..."
    logFormat = DEFAULT_FORMAT

    _timeouts: Timeouts | None = None
    _accessLog: Any = None
    _inflight = 0  # requests counted against limitConcurrency, in this worker
    clock: Any = None  # a forkd.testing.Clock in tests; the running loop otherwise

    def __init__(
        self, resource: Resource, logPath: str | None = None, logFormat: str | None = None
    ) -> None:
        self.resource = resource
        self.logPath = logPath
        if logFormat is not None:
            self.logFormat = logFormat

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in _RUNTIME:
            state.pop(name, None)
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}>"

    def getResourceFor(self, request: Request) -> Resource:
        """Walk the resource tree along the request's path."""
        request.site = self
        request.sitepath = request.prepath[:]
        resource = self.resource
        if not request.postpath or resource.isLeaf:
            return resource
        return getChildForRequest(resource, request)

    # -- run-time state (per worker, never pickled) ---------------------------------------
    def timeoutResolution(self) -> float:
        """How often timeouts are checked: a quarter of the shortest, at most a second."""
        shortest = min(
            self.headerTimeout,
            self.bodyTimeout,
            self.keepAliveTimeout,
            self.lingerTimeout,
            self.sendTimeout,
            self.drainIdleTimeout,
        )
        return max(0.01, min(1.0, shortest / 4))

    def _timeoutsFor(self) -> Timeouts:
        timeouts = self._timeouts
        if timeouts is None:
            clock = self.clock
            if clock is None:
                try:
                    clock = asyncio.get_running_loop()
                except RuntimeError:
                    clock = None
            self._timeouts = timeouts = Timeouts(
                clock, self.timeoutResolution(), onTick=self._flushLog
            )
            if self._accessLog is None:
                self._openLog()
        return timeouts

    def _openLog(self) -> None:
        """Open the access log, if the site has one. `_accessLog` is set on the instance
        even when it is None: every request reads it (Request.__init__, _done), and an
        instance attribute is a cheaper look-up than a miss that falls back to the class."""
        if self.logPath:
            from forkd.web.accesslog import AccessLog

            self._accessLog = AccessLog(self.logPath, self.logFormat)
        else:
            self._accessLog = None

    def _flushLog(self) -> None:
        if self._accessLog is not None:
            self._accessLog.flush()

    def startFactory(self) -> None:
        if self._accessLog is None:
            self._openLog()

    def stopFactory(self) -> None:
        if self._timeouts is not None:
            self._timeouts.stop()
            self._timeouts = None
        if self._accessLog is not None:
            self._accessLog.close()
            self._accessLog = None

    def reopenLogs(self) -> None:
        """Reopen the access log (after logrotate moved it: SIGUSR1)."""
        if self._accessLog is not None:
            self._accessLog.reopen()
