"""Request: one HTTP request and the response to it (twisted.web.server.Request's interface).

Bytes throughout, as in modern Twisted: `method`, `uri`, `path`, `args` keys and values,
header names and values. `setHeader` also takes str (encoded latin-1).

The hot path is a resource whose render returns bytes: `_respond` builds status line,
headers and body with one join and writes them with one `transport.write`. Resources that
return `NOT_DONE_YET` use `write` (the first write sends the headers; without a
Content-Length the body is chunked in HTTP/1.1, or delimited by closing in HTTP/1.0) and
`finish`. The request is light: request headers stay the parser's list of pairs until
something asks for `requestHeaders`, and `args` and `content` are made when first used.
"""

from __future__ import annotations

import logging
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

from forkd.web.dates import date_header
from forkd.web.headers import Headers, canonical_name, reason_phrase, status_line, to_bytes
from forkd.web.notify import Notifier
from forkd.web.resource import NOT_DONE_YET, UnsupportedMethod

log = logging.getLogger("forkd.web")

SERVER = b"Server: forkd\r\n"
_NO_BODY_CODES = frozenset({204, 304})
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def split_path(path: bytes) -> list[bytes]:
    """`/a/b%20c/` -> [b"a", b"b c", b""]: the segments resources are looked up by."""
    segments = path[1:].split(b"/")
    if b"%" in path:
        segments = [unquote_to_bytes(s) for s in segments]
    return segments


class Request:
    """An HTTP request being answered on an HTTPChannel."""

    __slots__ = (
        "channel",
        "site",
        "method",
        "uri",
        "path",
        "clientproto",
        "keepAlive",
        "prepath",
        "postpath",
        "sitepath",
        "code",
        "code_message",
        "startedWriting",
        "finished",
        "sentLength",
        "_query",
        "_raw",
        "_requestHeaders",
        "_args",
        "_content",
        "_bodySize",
        "_out",
        "_chunked",
        "_keep",
        "_notifiers",
        "_disconnected",
        "_sender",
    )

    defaultContentType = b"text/html"

    def __init__(
        self,
        channel: Any,
        method: bytes,
        uri: bytes,
        clientproto: bytes,
        rawHeaders: list[tuple[bytes, bytes]],
        keepAlive: bool,
    ) -> None:
        self.channel = channel
        self.site = channel.factory
        self.method = method
        self.uri = uri
        if uri[:1] == b"/":
            path, _, self._query = uri.partition(b"?")
        elif uri == b"*":
            path, self._query = b"*", b""
        else:  # absolute-form (a proxy-style request line): keep its path and query
            parts = urlsplit(uri)
            path, self._query = parts.path or b"/", parts.query
        self.path = path
        self.clientproto = clientproto
        self.keepAlive = keepAlive
        self.prepath: list[bytes] = []
        self.postpath = split_path(path)
        self.sitepath: list[bytes] = []
        self.code = 200
        self.code_message: bytes | None = None
        self.startedWriting = False
        self.finished = False
        self.sentLength = 0
        self._raw = rawHeaders
        self._requestHeaders: Headers | None = None
        self._args: dict[bytes, list[bytes]] | None = None
        self._content: BytesIO | None = None
        self._bodySize = 0
        self._out: Headers | None = None
        self._chunked = False
        self._keep = keepAlive
        self._notifiers: list[Notifier] | None = None
        self._disconnected = False
        self._sender: Any = None

    # -- the request ----------------------------------------------------------------------
    @property
    def requestHeaders(self) -> Headers:
        headers = self._requestHeaders
        if headers is None:
            headers = self._requestHeaders = Headers.fromPairs(self._raw)
        return headers

    def getHeader(self, name: bytes | str) -> bytes | None:
        """The last value of request header `name`, or None."""
        key = to_bytes(name).lower()
        for header, value in reversed(self._raw):
            if header.lower() == key:
                return value
        return None

    def getAllHeaders(self) -> dict[bytes, bytes]:
        return {name: values[-1] for name, values in self.requestHeaders._raw.items()}

    @property
    def content(self) -> BytesIO:
        """The request body (a BytesIO positioned at 0 once the request is processed)."""
        content = self._content
        if content is None:
            content = self._content = BytesIO()
        return content

    @content.setter
    def content(self, value: BytesIO) -> None:
        self._content = value

    @property
    def query(self) -> bytes:
        return self._query

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """Query arguments (and urlencoded form fields of the body), bytes -> list of bytes."""
        args = self._args
        if args is None:
            args = parse_qs(self._query, keep_blank_values=True) if self._query else {}
            ctype = self.getHeader(b"content-type") or b""
            if self._content is not None and ctype.split(b";")[0].strip().lower() == (
                b"application/x-www-form-urlencoded"
            ):
                for key, values in parse_qs(
                    self._content.getvalue(), keep_blank_values=True
                ).items():
                    args.setdefault(key, []).extend(values)
            self._args = args
        return args

    @args.setter
    def args(self, value: dict[bytes, list[bytes]]) -> None:
        self._args = value

    def getClientAddress(self) -> tuple[Any, ...]:
        """The peer as the seed's tuple: ('INET', host, port), ('INET6', ...), ('UNIX', path)."""
        peer: tuple[Any, ...] = self.channel.transport.getPeer()
        return peer

    def getClientIP(self) -> str | None:
        peer = self.getClientAddress()
        return peer[1] if peer[0] in ("INET", "INET6") else None

    def getHost(self) -> tuple[Any, ...]:
        host: tuple[Any, ...] = self.channel.transport.getHost()
        return host

    def getRequestHostname(self) -> bytes:
        """The Host header without its port (or this end's address when there is none)."""
        host = self.getHeader(b"host")
        if host:
            if host.startswith(b"["):
                return host.split(b"]", 1)[0] + b"]"
            return host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host
        return str(self.getHost()[1]).encode("ascii")

    def isSecure(self) -> bool:
        transport = self.channel.transport
        getter = getattr(transport, "get_extra_info", None)
        return bool(getter and getter("sslcontext"))

    def prePathURL(self) -> bytes:
        scheme = b"https" if self.isSecure() else b"http"
        host = self.getHeader(b"host") or self.getRequestHostname()
        return scheme + b"://" + host + b"/" + b"/".join(self.prepath)

    # -- the response ---------------------------------------------------------------------
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
        transport = self.channel.transport
        if not self.startedWriting:
            parts = self._headerBlock(None)
            self.startedWriting = True
            if data and self.method != b"HEAD" and self.code not in _NO_BODY_CODES:
                self.sentLength += len(data)
                parts.append(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else bytes(data))
            transport.write(b"".join(parts))
        elif data and self.method != b"HEAD" and self.code not in _NO_BODY_CODES:
            self.sentLength += len(data)
            if self._chunked:
                transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                transport.write(data)

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
            self.channel.transport.write(b"0\r\n\r\n")
        self._done()

    def _done(self) -> None:
        self.finished = True
        accesslog = self.site._accessLog
        if accesslog is not None:
            accesslog.log(self)
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

    # -- processing -----------------------------------------------------------------------
    def process(self) -> None:
        """Find the resource for this request, render it, and send what it returns."""
        site = self.site
        try:
            resource = site.getResourceFor(self)
            body = resource.render(self)
        except UnsupportedMethod as e:
            self._unsupported(e)
            return
        except Exception:
            log.exception("error rendering %r", self.uri)
            self._failed()
            return
        if body is NOT_DONE_YET:
            return
        if type(body) is bytes and not self.startedWriting:
            self._respond(body)
        elif isinstance(body, (bytes, bytearray)):
            self.write(body)
            self.finish()
        else:
            log.error("resource for %r returned %s, not bytes", self.uri, type(body).__name__)
            self._failed()

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
        if self._sender is not None:
            self._sender.stop()
            self._sender = None
        notifiers = self._notifiers
        if notifiers and not self.finished:
            self._notifiers = None
            for notifier in notifiers:
                notifier.errback(reason)

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.uri!r} {self.clientproto!r}>"
