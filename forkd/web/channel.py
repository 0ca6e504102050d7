"""HTTPChannel: the HTTP/1.x server protocol (one instance per connection).

Wire handling, the way nginx does it:

- httptools (llhttp) parses; its callbacks are this class's `on_*` methods. A request is
  dispatched when its message is complete; responses go out in request order (pipelining):
  requests that arrive while a response is still being written (NOT_DONE_YET) wait in a
  queue, and reading pauses when the queue is `Site.maxPipelined` long.
- Keep-alive follows each version's rules (1.1 unless `Connection: close`; 1.0 only with
  `Connection: keep-alive`, echoed back). `Expect: 100-continue` is answered when the body
  is acceptable. An `Upgrade` or CONNECT request is answered and the connection closed,
  unless the resource takes the connection over (`switchProtocol`: a WebSocket).
- Limits: malformed request 400; unknown method 501; URL plus header block over
  `Site.maxHeaderSize` 431; gunicorn's request limits: a request line longer than
  `Site.limitRequestLine` 414, more header fields than `Site.limitRequestFields` or one
  (`Name: value`) longer than `Site.limitRequestFieldSize` 431 (each checked as the
  parser hands over the URL or a field, never per byte); body over `Site.maxBodySize` 413
  (from Content-Length before the body is read, or while a chunked body arrives); headers
  not complete within `Site.headerTimeout` or a body stalled for `Site.bodyTimeout` 408;
  more than `Site.limitConcurrency` requests in progress in the worker 503 (with
  `Retry-After`), before the resource is touched. Every error response says
  `Connection: close` and the connection is closed after it.
- Proxy headers (forkd.web.proxy): only a request that carries X-Forwarded-For,
  X-Forwarded-Proto or Forwarded, from a peer in `Site.trustedProxies`, gets them read;
  the trust is decided once per connection.
- Idle connections: closed silently after `Site.keepAliveTimeout` between requests (the
  first request gets `headerTimeout`). Timeouts are checked by one timer per Site (see
  forkd.web.timeouts), so a request costs an attribute store, not a timer.
- Send timeout (nginx's send_timeout): output that waits on the peer (forkd.web.outqueue)
  for `Site.sendTimeout` with no progress aborts the connection, so a client that stops
  reading a response cannot hold the worker's memory, file and socket for ever. Any
  progress restarts the clock; a slow reader is never cut.
- Backpressure: while the transport's write buffer is over its high-water mark, reading
  pauses (no new requests are parsed for a peer that is not reading the answers) and a
  registered producer (a file being sent) pauses too.
- Graceful drain (`connectionDraining`): an idle connection closes at once; otherwise the
  response in progress (and any already received behind it) is finished, the last one with
  `Connection: close`, and then the connection closes. A keep-alive client never loses a
  request it sent.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from typing import Any

from httptools import (
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from forkd.protocol import Protocol, stats
from forkd.web.dates import date_header
from forkd.web.headers import reason_phrase, status_line
from forkd.web.outqueue import unsent
from forkd.web.proxy import forwarded_by
from forkd.web.request import Request
from forkd.web.response import SERVER

log = logging.getLogger("forkd.web")

IDLE, HEADERS, BODY = 0, 1, 2  # what the parser is in the middle of
_PAUSED_WRITE, _PAUSED_QUEUE, _PAUSED_CLOSING, _PAUSED_BODY = 1, 2, 4, 8
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0", "0.9": b"HTTP/1.0"}
_METHOD_LIKE = re.compile(rb"(?:^|\n)[!#$%&'*+.^_`|~0-9A-Za-z-]+(?: |$)")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: seconds a client turned away by Site.limitConcurrency is told to wait (Retry-After)
RETRY_AFTER = 1
_UNLIMITED = 1 << 62
_AROUND_TARGET = len(b"  HTTP/1.1")  # a request line is METHOD SP target SP HTTP/x.y
_LONGEST_METHOD = 32  # llhttp's longest is UNSUBSCRIBE, 11 bytes


def _valid_target(method: bytes, url: bytes) -> bool:
    """Whether a request target that is not origin-form (`/path`) is one we can serve:
    `*` for OPTIONS, or absolute-form `http(s)://host/...` (RFC 9112 3.2). CONNECT's
    authority-form is left to the resource (it is answered and the connection closed)."""
    if url == b"*":
        return method == b"OPTIONS"
    if method == b"CONNECT":
        return True
    scheme, sep, rest = url.partition(b"://")
    return bool(sep) and scheme.lower() in (b"http", b"https") and rest[:1] not in (b"", b"/")


_FORWARDED_FOR = (b"x-forwarded-for", b"forwarded")


class _Reject(Exception):
    """Raised inside a parser callback to answer the request with an error status."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def error_response(code: int) -> bytes:
    """A complete `Connection: close` response with a one-line text body (and, for a 503,
    when to try again)."""
    body = b"%d %s\n" % (code, reason_phrase(code))
    return b"".join(
        (
            status_line(code),
            date_header(),
            SERVER,
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Retry-After: %d\r\n" % RETRY_AFTER if code == 503 else b"",
            b"Connection: close\r\n\r\n",
            body,
        )
    )


class HTTPChannel(Protocol):
    """An HTTP/1.0 and 1.1 server connection for a Site (`self.factory`)."""

    requestFactory = Request

    def connectionMade(self) -> None:
        site = self.factory
        self._site = site
        self._parser = HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hexact = 0  # header bytes seen by callbacks
        self._hchunks = 0  # bytes of chunks that arrived while the header block was open
        self._request: Request | None = None  # being received
        self._active: Request | None = None  # being answered
        self._queue: deque[Request | int] = deque()
        self._state = IDLE
        self._served = 0
        self._draining = False
        self._closing = False  # no more requests will be read or answered beyond the queue
        self._paused = 0
        self._lingering = False
        self._producer: Any = None
        self._written = 0  # bytes Request.write sent since the last sweep
        self._sendPending = 0  # unsent output at the last sweep
        self._sendSince = 0.0  # when that output last made progress
        self._bodySince = 0.0  # when the body in progress began
        self._upgraded: Any = None  # the protocol that took the connection over (WebSocket)
        server = self.server
        self._portCounts = stats.countsFor(server) if server is not None else [0, 0]
        self._trusted: bool | None = None  # whether the peer may send proxy headers
        self._counted = False  # the active request counts against Site.limitConcurrency
        # gunicorn's limits, as the bounds the parser callbacks compare with (0: none)
        self._lineLimit = site.limitRequestLine or _UNLIMITED
        self._fieldRoom = (site.limitRequestFieldSize or _UNLIMITED) - len(b": ")
        self._timeouts = site._timeoutsFor()
        self._since = self._timeouts.now
        self._timeouts.add(self)

    # -- reading --------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._upgraded is not None:
            self._upgraded.dataReceived(data)
            return
        if self._closing:
            return
        if self._state == HEADERS:
            self._hchunks += len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            if self._upgraded is not None:  # the resource took the connection over
                rest = data[upgrade.args[0] :] if upgrade.args else b""
                if rest:
                    self._upgraded.dataReceived(rest)
                return
            # The upgrade request itself was answered (with Connection: close); whatever
            # follows it is another protocol we do not speak.
            self._closing = True
            return
        except HttpParserInvalidMethodError:
            # A well-formed method token we do not know is 501 (as RFC 9110 says); a request
            # line that is not a token at all is simply malformed.
            self._fail(501 if _METHOD_LIKE.search(data) else 400)
            return
        except HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _Reject):
                self._fail(cause.code)
            else:
                if cause is not None:
                    log.error("HTTP channel error", exc_info=cause)
                self._fail(400)
            return
        if self._state == HEADERS and self._hchunks > self._site.maxHeaderSize:
            self._fail(431)

    def on_message_begin(self) -> None:
        self._state = HEADERS
        self._since = self._timeouts.now
        self._url = b""
        self._headers = []
        self._hexact = 0
        self._hchunks = 0

    def on_url(self, url: bytes) -> None:
        self._url = target = self._url + url
        self._hexact += len(url)
        limit = self._lineLimit
        # the method is parsed by now; asked for only when the longest could not fit
        if len(target) + _AROUND_TARGET + _LONGEST_METHOD > limit and (
            len(target) + _AROUND_TARGET + len(self._parser.get_method()) > limit
        ):
            raise _Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._hexact += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        site = self._site
        if self._hexact > site.maxHeaderSize:
            raise _Reject(431)
        fields = site.limitRequestFields
        if fields and len(self._headers) > fields:
            raise _Reject(431)
        room = self._fieldRoom
        # a field longer than the limit makes the block longer too: only then look
        if self._hexact > room and any(len(n) + len(v) > room for n, v in self._headers):
            raise _Reject(431)
        parser = self._parser
        method = parser.get_method()
        keep = parser.should_keep_alive()
        version = parser.get_http_version()
        length = -1
        expect = False
        coded = False
        proxied = False
        hosts = 0
        for name, value in self._headers:
            size = len(name)
            if size == 4 and name.lower() == b"host":
                hosts += 1
            elif size == 14 and name.lower() == b"content-length":
                length = int(value)
            elif size == 6 and name.lower() == b"expect":
                expect = value.lower() == b"100-continue"
            elif size == 7 and name.lower() == b"upgrade":
                keep = False
            elif size == 17:
                lowered = name.lower()
                if lowered == b"transfer-encoding":
                    coded = True
                    if version == "1.0":
                        # RFC 9112 6.1: a 1.0 message with a transfer coding has faulty
                        # framing (an intermediary may have read it by Content-Length)
                        keep = False
                elif lowered == b"x-forwarded-proto":
                    proxied = True
            elif (size == 15 or size == 9) and name.lower() in _FORWARDED_FOR:
                proxied = True
        # RFC 9112 3.2: a 1.1 request without exactly one Host is a 400 (nginx too); more
        # than one lets a proxy and this server disagree about which host is meant.
        if hosts > 1 or (not hosts and version == "1.1"):
            raise _Reject(400)
        url = self._url
        if url[:1] != b"/" and not _valid_target(method, url):
            raise _Reject(400)
        if method == b"CONNECT":
            keep = False
        self._request = self.requestFactory(
            self,
            method,
            url,
            _VERSIONS.get(version, b"HTTP/1.1"),
            self._headers,
            keep,
        )
        if proxied and self._trustsPeer():
            forwarded = forwarded_by(site.trustedProxies, self._headers)
            if forwarded is not None:
                self._request.setForwarded(forwarded)
        self._state = BODY
        self._since = self._bodySince = self._timeouts.now
        if site.maxBodySize and length > site.maxBodySize:
            raise _Reject(413)
        # RFC 9110 10.1.1: an HTTP/1.0 client does not know 100 (it would take it for the
        # response), so its expectation is ignored.
        if expect and version != "1.0" and self._active is None and not self._queue:
            self.transport.write(CONTINUE)
        if (length > 0 or coded) and self._active is None and not self._queue:
            self._streamIfAsked(self._request)

    def _streamIfAsked(self, request: Request) -> None:
        """A resource with `streamsBody = True` is rendered before its body arrives and
        handed it piece by piece (Request.onBody), instead of the body being kept whole."""
        prepath, postpath = request.prepath[:], request.postpath[:]
        try:
            resource = self._site.getResourceFor(request)
        except Exception:  # walked again, and answered as usual, once the body is in
            request.prepath, request.postpath = prepath, postpath
            return
        request._resource = resource  # the walk consumed postpath: process() must reuse it
        if getattr(resource, "streamsBody", False):
            if not self._admit():
                raise _Reject(503)
            request._streaming = True
            stats.requests += 1
            self._portCounts[1] += 1
            self._active = request
            request.process()

    def switchProtocol(self, protocol: Any) -> None:
        """Hand this connection to `protocol` (a WebSocket), from the upgrade request being
        rendered on: it gets every byte that follows the request, `connectionLost`,
        `connectionDraining` and the write buffer's `pause_writing`/`resume_writing`. HTTP's
        timeouts stop applying: the new protocol keeps its own (pings)."""
        self._upgraded = protocol
        self._timeouts.discard(self)

    def pauseBody(self) -> None:
        """A streaming resource cannot keep up: stop reading until resumeBody."""
        self._pauseReading(_PAUSED_BODY)

    def resumeBody(self) -> None:
        if self._paused & _PAUSED_BODY:  # the body's clocks start again from here
            self._since = self._bodySince = self._timeouts.now
        self._resumeReading(_PAUSED_BODY)

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is None:
            return
        size = request._bodySize + len(body)
        if size > self._site.maxBodySize > 0:
            raise _Reject(413)
        request._bodySize = size
        request._bodyReceived(body)
        self._since = self._timeouts.now

    def on_message_complete(self) -> None:
        request = self._request
        self._request = None
        self._state = IDLE
        self._since = self._timeouts.now
        if request is None or self._closing:
            return
        if request._streaming:  # rendered at its headers: it only hears that the body ended
            self._resumeReading(_PAUSED_BODY)
            request._bodyDone()
            return
        stats.requests += 1
        self._portCounts[1] += 1
        request.bodyComplete = True
        if request._content is not None:
            request._content.seek(0)
        if self._active is None and not self._queue:
            if not self._admit():
                raise _Reject(503)
            self._active = request
            request.process()
        else:
            self._queue.append(request)
            if len(self._queue) >= self._site.maxPipelined:
                self._pauseReading(_PAUSED_QUEUE)

    def _trustsPeer(self) -> bool:
        """Whether this connection's peer is a trusted proxy (asked once per connection)."""
        trusted = self._trusted
        if trusted is None:
            peer = self.transport.getPeer()
            trusted = self._trusted = self._site.trustedProxies.trustsPeer(peer)
        return trusted

    # -- answering ------------------------------------------------------------------------
    def _admit(self) -> bool:
        """Whether a request may be answered now under Site.limitConcurrency (requests in
        progress in this worker); if so it is counted until it is done."""
        site = self._site
        limit = site.limitConcurrency
        if not limit:
            return True
        if site._inflight >= limit:
            return False
        site._inflight += 1
        self._counted = True
        return True

    def _release(self) -> None:
        """The active request is done (or will never be): it no longer counts."""
        if self._counted:
            self._counted = False
            self._site._inflight -= 1

    def _hasMore(self) -> bool:
        """Whether the client has sent (part of) another request we must still answer."""
        return bool(self._queue) or self._state != IDLE

    def _requestDone(self, request: Request) -> None:
        """Called by Request when its response is complete: close, or answer the next."""
        if request is not self._active:
            return
        self._active = None
        self._release()
        self._served += 1
        if request._streaming and not request.bodyComplete:
            # Answered before its body was in (an app that refuses an upload unread): the
            # rest is not read for a next request, but closing with it unread would reset
            # the connection and can destroy this very answer: linger, as after an error.
            self._closing = True
            self._closeLingering()
            return
        if not request._keep:
            self._closing = True
            self.transport.loseConnection()
            return
        if self._queue:
            self._answerQueued()

    def _answerQueued(self) -> None:
        queue = self._queue
        while queue and self._active is None and self.connected:
            item = queue.popleft()
            if isinstance(item, int):
                self._writeError(item)
                return
            if not self._admit():
                queue.clear()  # the client retries what it sent behind (Connection: close)
                self._writeError(503)
                return
            self._active = item
            item.process()
        if self._paused & _PAUSED_QUEUE and len(queue) < self._site.maxPipelined // 2 + 1:
            self._resumeReading(_PAUSED_QUEUE)

    def _fail(self, code: int) -> None:
        """Answer with an error status after anything already received, then close."""
        self._closing = True
        self._request = None
        self._state = IDLE
        self._pauseReading(_PAUSED_CLOSING)
        active = self._active
        if active is not None and active._streaming and not active.bodyComplete:
            # the resource waits for a body that will not come: it is not answered further
            active._bodyFailed()
            active.finished = True
            self._active = None
            self._release()
            if active.startedWriting:  # half a response is out: nothing else can follow
                self.transport.abortConnection()
                return
        if self._active is None and not self._queue:
            self._writeError(code)
        else:
            self._queue.append(code)

    def _writeError(self, code: int) -> None:
        """Send the error and close like nginx's lingering close: shut down our side and
        discard what the peer still sends for a moment, because closing a socket with
        unread input makes the kernel send a reset that can destroy the response in
        flight (a 413 or 431 answered while the client is still uploading)."""
        self._closing = True
        self.transport.write(error_response(code))
        stats.responded(code)
        self._closeLingering()

    def _closeLingering(self) -> None:
        """Close after what is written, reading and discarding the peer's input for up
        to Site.lingerTimeout after a half-close, so that unread input cannot reset the
        connection under the last response."""
        transport = self.transport
        write_eof = getattr(transport, "writeEOF", None)
        extra = getattr(transport, "get_extra_info", None)
        # TLS cannot half-close (Transport.writeEOF then does nothing): close normally.
        if write_eof is not None and (extra is None or extra("sslcontext") is None):
            write_eof()
            self._lingering = True
            self._since = self._timeouts.now
            self._resumeReading(_PAUSED_CLOSING | _PAUSED_QUEUE | _PAUSED_WRITE | _PAUSED_BODY)
        else:
            transport.loseConnection()

    # -- flow control ---------------------------------------------------------------------
    def _pauseReading(self, why: int) -> None:
        if not self._paused:
            self.transport.pauseProducing()
        self._paused |= why

    def _resumeReading(self, why: int) -> None:
        if not self._paused & why:
            return
        self._paused &= ~why
        if not self._paused and self.connected and (self._lingering or not self._closing):
            self.transport.resumeProducing()

    @property
    def writePaused(self) -> bool:
        """Whether the peer is behind: the write buffer is over its high-water mark."""
        return bool(self._paused & _PAUSED_WRITE)

    def registerProducer(self, producer: Any) -> None:
        """Have `producer` paused and resumed with the write buffer (a file being sent).
        One registered while the buffer is already over its high-water mark is paused at
        once: it would otherwise write until the next pause, which may never come."""
        self._producer = producer
        if self._paused & _PAUSED_WRITE:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def pause_writing(self) -> None:
        if self._upgraded is not None:
            self._upgraded.pause_writing()
        if self._producer is not None:
            self._producer.pauseProducing()
        self._pauseReading(_PAUSED_WRITE)

    def resume_writing(self) -> None:
        if self._upgraded is not None:
            self._upgraded.resume_writing()
        if self._producer is not None:
            self._producer.resumeProducing()
        self._resumeReading(_PAUSED_WRITE)

    # -- timeouts and shutdown ------------------------------------------------------------
    def checkTimeout(self, now: float) -> None:
        """Called about every Site.timeoutResolution seconds by the Site's timer."""
        if self._lingering:
            if now - self._since >= self._site.lingerTimeout and self.connected:
                self.transport.abortConnection()
            return
        if not self.connected:
            return
        if self._sendStalled(now):
            # Checked before anything else: a response already finished (or a connection
            # already told to close after flushing) can be the one stuck in the buffer.
            log.info("send timeout: %r stopped reading, connection aborted", self._peer())
            self._closing = True
            self.transport.abortConnection()
            return
        active = self._active
        streaming = active is not None and active._streaming and self._state == BODY
        if (active is not None and not streaming) or self._closing:
            return
        if self._paused & _PAUSED_BODY:  # held back for the resource: not the client's fault
            return
        site = self._site
        state = self._state
        elapsed = now - self._since
        if state == IDLE:
            limit = site.keepAliveTimeout if self._served else site.headerTimeout
            if self._draining:
                limit = min(limit, site.drainIdleTimeout)
            if elapsed >= limit and not self._queue:
                self._closing = True
                self.transport.loseConnection()
        elif state == HEADERS:
            if elapsed >= site.headerTimeout:
                self._fail(408)
        elif elapsed >= site.bodyTimeout or self._trickling(now):
            self._fail(408)

    def _trickling(self, now: float) -> bool:
        """Whether the body in progress averages under Site.minBodyRate after its grace."""
        site, request = self._site, self._request
        if request is None or not site.minBodyRate:
            return False
        taken = now - self._bodySince
        return bool(taken > site.bodyRateGrace and request._bodySize < site.minBodyRate * taken)

    def _sendStalled(self, now: float) -> bool:
        """Whether output has waited on the peer for Site.sendTimeout with no progress.

        Progress is any change of the unsent bytes that the writes counted in `_written`
        do not explain: fewer means the peer took some; more means a write we do not
        count (a whole response from the fast path, which stops once reading pauses at
        the high-water mark) and gets the benefit of the doubt."""
        active = self._active
        pending = unsent(self.transport, active._sender if active is not None else None)
        written = self._written
        self._written = 0
        last = self._sendPending
        self._sendPending = pending
        if not pending:
            return False
        if not last or pending != last + written:
            self._sendSince = now
            return False
        return bool(now - self._sendSince >= self._site.sendTimeout)

    def _peer(self) -> Any:
        try:
            return self.transport.getPeer()
        except Exception:  # a peer address is only for the log line
            return None

    def connectionDraining(self) -> None:
        """The worker is stopping: finish the responses in progress, answer the next request
        with `Connection: close`, and close a connection only once it has stayed idle for
        Site.drainIdleTimeout (closing the moment it is idle races a keep-alive client that
        is sending its next request right then: the request would be lost)."""
        self._draining = True
        if self._upgraded is not None:
            self._upgraded.connectionDraining()
            return
        idle = self._active is None and self._state == IDLE and not self._queue
        if idle and self._timeouts.now - self._since >= self._site.drainIdleTimeout:
            self._closing = True
            self.transport.loseConnection()

    def connectionLost(self, reason: BaseException | None = None) -> None:
        self._timeouts.discard(self)
        self._closing = True
        self._queue.clear()
        if self._upgraded is not None:
            self._upgraded.connectionLost(reason)
        self._release()
        active = self._active
        if active is not None:
            active._connectionLost(reason or ConnectionError("connection lost"))
