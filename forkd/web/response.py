"""ResponseWriter: the response half of a Request (status, headers, body framing).

Request (forkd.web.request) subclasses it; the split keeps parsing what the client sent
apart from deciding what goes back on the wire. The hot path is a resource whose render
returns bytes: `_respond` builds status line, headers and body with one join and writes
them with one `transport.write`. Resources that return `NOT_DONE_YET` use `write` (the
first write sends the headers; without a Content-Length the body is chunked in HTTP/1.1,
or delimited by closing in HTTP/1.0) and `finish`; `sendfile` streams an open file.

`_headerBlock` decides keep-alive: the request's own wish, turned off while the worker
drains unless the client already sent more, and off for a body delimited by closing.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from forkd.protocol import stats
from forkd.web.dates import date_header
from forkd.web.headers import Headers, canonical_name, reason_phrase, status_line
from forkd.web.notify import Notifier
from forkd.web.resource import UnsupportedMethod

log = logging.getLogger("forkd.web")

SERVER = b"Server: forkd\r\n"
_NO_BODY_CODES = frozenset({204, 304})
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class ResponseWriter:
    """Writes the response to a request on its channel (`self.channel`, an HTTPChannel).

    The slots here are the response's state; Request declares the request's and sets
    both in its `__init__` (one constructor on the hot path, not two).
    """

    __slots__ = (
        "code",
        "code_message",
        "startedWriting",
        "finished",
        "sentLength",
        "_out",
        "_chunked",
        "_keep",
        "_notifiers",
        "_disconnected",
        "_sender",
        "_length",
    )

    defaultContentType = b"text/html"

    # Set by Request.__init__ (declared here for the type checker).
    _born: float
    channel: Any
    site: Any
    method: bytes
    uri: bytes
    clientproto: bytes
    keepAlive: bool
    code: int
    code_message: bytes | None
    startedWriting: bool
    finished: bool
    sentLength: int
    _out: Headers | None
    _chunked: bool
    _keep: bool
    _notifiers: list[Notifier] | None
    _disconnected: bool
    _sender: Any
    _length: int

    @property
    def responseHeaders(self) -> Headers:
        out = self._out
        if out is None:
            out = self._out = Headers()
        return out

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        if not isinstance(code, int) or not 100 <= code <= 999:
            raise ValueError(f"invalid HTTP status code: {code!r}")
        self.code = code
        self.code_message = message

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        """Set response header `name` (replacing earlier values); str is encoded latin-1."""
        out = self._out
        if out is None:
            out = self._out = Headers()
        if (
            type(name) is bytes
            and type(value) is bytes
            and b"\n" not in value
            and b"\r" not in value
            and b"\0" not in value
            and b"\n" not in name
            and b"\r" not in name
        ):  # the common case, checked inline: this runs on most responses
            out._raw[name.lower()] = [value]
        else:
            out.setRawHeaders(name, [value])

    def redirect(self, url: bytes | str, code: int = 302) -> None:
        self.setResponseCode(code)
        self.setHeader(b"location", url)

    def notifyFinish(self) -> Notifier:
        """A Notifier fired with None when the response is finished, or failed (errback) with
        the reason if the connection is lost first."""
        notifier = Notifier()
        if self.finished:
            notifier.callback(None)
        elif self._disconnected:
            notifier.errback(ConnectionError("Connection lost before the response finished."))
        else:
            if self._notifiers is None:
                self._notifiers = []
            self._notifiers.append(notifier)
        return notifier

    def _headerBlock(self, length: int | None) -> list[bytes]:
        """Status line and headers up to the blank line; decides keep-alive and framing."""
        channel = self.channel
        keep = self.keepAlive
        if keep and channel._draining:
            keep = channel._hasMore()
        code = self.code
        message = self.code_message
        parts = [
            status_line(code) if message is None else status_line(code, message),
            date_header(),
            SERVER,
        ]
        out = self._out
        has_type = False
        if out is not None:
            raw = out._raw
            has_type = b"content-type" in raw
            if length is None and b"content-length" in raw and not self.startedWriting:
                try:
                    length = int(raw[b"content-length"][-1])
                except ValueError:
                    length = None
            for name, values in raw.items():
                if name in _FRAMING:
                    continue
                cname = canonical_name(name)
                for value in values:
                    parts += (cname, b": ", value, b"\r\n")
        if code in _NO_BODY_CODES or code < 200:
            pass
        else:
            if not has_type:
                parts += (b"Content-Type: ", self.defaultContentType, b"\r\n")
            if length is not None:
                parts.append(b"Content-Length: %d\r\n" % length)
            elif self.clientproto == b"HTTP/1.1":
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self._chunked = self.method != b"HEAD"
            else:
                keep = False
        if not keep:
            parts.append(b"Connection: close\r\n\r\n")
        elif self.clientproto == b"HTTP/1.0":
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        self._keep = keep
        return parts

    def _respond(self, body: bytes) -> None:
        """Send a whole response, headers and body, in one write: the fast path."""
        if self._disconnected:
            self.finished = True
            return
        if self.method == b"HEAD":
            out = self._out
            if body or out is None or b"content-length" not in out._raw:
                parts = self._headerBlock(len(body))
            else:
                parts = self._headerBlock(None)
            self._chunked = False
        elif self.code in _NO_BODY_CODES:
            parts = self._headerBlock(None)
        else:
            parts = self._headerBlock(len(body))
            parts.append(body)
            self.sentLength = len(body)
        self.startedWriting = True
        self.channel.transport.write(b"".join(parts))
        self._done()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send part of the body; the first call sends the status and headers first."""
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish.")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Request.write takes bytes, not {type(data).__name__}")
        if self._disconnected:
            return
        channel = self.channel
        if not self.startedWriting:
            parts = self._headerBlock(None)
            self.startedWriting = True
            if not self._chunked:
                self._length = self._declaredLength()
            if self._length >= 0:
                data = self._clip(data)
            if data and self.method != b"HEAD" and self.code not in _NO_BODY_CODES:
                self.sentLength += len(data)
                parts.append(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else bytes(data))
            out: bytes | bytearray | memoryview = b"".join(parts)
        elif data and self.method != b"HEAD" and self.code not in _NO_BODY_CODES:
            if self._length >= 0:
                data = self._clip(data)
            self.sentLength += len(data)
            out = b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data
        else:
            return
        # Counted for the send timeout (see HTTPChannel.checkTimeout), which must tell
        # a peer that takes our bytes from a buffer that grows because we keep writing.
        channel._written += len(out)
        channel.transport.write(out)

    def finish(self) -> None:
        """The response is complete: end the body and let the connection go on."""
        if self.finished:
            raise RuntimeError("Request.finish called twice on the same request.")
        if self._disconnected:
            self.finished = True
            return
        if not self.startedWriting:
            self._respond(b"")
            return
        if self._chunked:
            channel = self.channel
            channel._written += 5
            channel.transport.write(b"0\r\n\r\n")
        elif 0 <= self.sentLength < self._length:
            # Fewer bytes than the Content-Length promised: the client would take the next
            # response for the rest of this body. Close instead (nginx does the same when
            # an upstream falls short): the client sees a truncated response, not garbage.
            log.error(
                "response to %r is %d of the %d bytes its Content-Length says: closing",
                self.uri,
                self.sentLength,
                self._length,
            )
            self._keep = False
        self._done()

    def _declaredLength(self) -> int:
        """The Content-Length the headers just sent promise a body of, or -1 (none, or a
        response that has no body: HEAD, 1xx, 204, 304)."""
        out = self._out
        if out is None or self.method == b"HEAD" or self.code in _NO_BODY_CODES:
            return -1
        values = out._raw.get(b"content-length")
        try:
            return int(values[-1]) if values else -1
        except ValueError:
            return -1

    def _clip(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """`data` cut to what is left of the declared Content-Length: bytes beyond it would
        be read as the start of the next response (the connection closes after this one)."""
        room = self._length - self.sentLength
        if len(data) <= room:
            return data
        if self._keep:
            log.error(
                "response to %r is longer than its Content-Length %d: extra bytes dropped",
                self.uri,
                self._length,
            )
            self._keep = False
        return data[:room]

    def _done(self) -> None:
        self.finished = True
        took = perf_counter() - self._born  # since the headers were complete
        stats.responded(self.code, took)
        accesslog = self.site._accessLog
        if accesslog is not None:
            accesslog.log(self, took)
        notifiers = self._notifiers
        if notifiers:
            self._notifiers = None
            for notifier in notifiers:
                notifier.callback(None)
        self.channel._requestDone(self)

    def sendfile(self, file: Any, offset: int, count: int) -> None:
        """Send `count` bytes of the open binary `file` from `offset` as the body (zero copy
        where the platform allows), then finish. The caller sets Content-Length first and
        returns NOT_DONE_YET; `file` is closed when done."""
        from forkd.web.sendfile import FileSender

        self.write(b"")
        if self.method == b"HEAD" or self._disconnected:
            file.close()
            self.finish()
            return
        self._sender = FileSender(self, file, offset, count)
        self._sender.start()

    # -- errors and the end of the connection ---------------------------------------------
    def _unsupported(self, error: UnsupportedMethod) -> None:
        if self.method in self.site.supportedMethods:
            self.setResponseCode(405)
            self.setHeader(b"allow", b", ".join(error.allowedMethods))
        else:
            self.setResponseCode(501)
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self._respond(b"%d %s\n" % (self.code, reason_phrase(self.code)))

    def _failed(self) -> None:
        """An error in the application: 500 if nothing is sent yet, else cut the response."""
        if self.startedWriting:
            self.channel.transport.abortConnection()
            return
        self._out = None
        self.code, self.code_message = 500, None
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self._respond(b"500 Internal Server Error\n")

    def _connectionLost(self, reason: BaseException) -> None:
        self._disconnected = True
        self._bodyFailed()  # type: ignore[attr-defined]  # Request's: a streamed body ends
        if self._sender is not None:
            self._sender.stop()
            self._sender = None
        notifiers = self._notifiers
        if notifiers and not self.finished:
            self._notifiers = None
            for notifier in notifiers:
                notifier.errback(reason)
