"""Request: one HTTP request and the response to it (twisted.web.server.Request's interface).

Bytes throughout, as in modern Twisted: `method`, `uri`, `path`, `args` keys and values,
header names and values. `setHeader` also takes str (encoded latin-1).

This module is the request half: what the client sent, and `process`, which finds the
resource and renders it. The response half (status, headers, `write`, `finish`,
`sendfile`) is forkd.web.response.ResponseWriter, which Request subclasses. The request is
light: request headers stay the parser's list of pairs until something asks for
`requestHeaders`, and `args` and `content` are made when first used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from tempfile import SpooledTemporaryFile
from time import perf_counter
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

from forkd.web.headers import Headers, to_bytes
from forkd.web.notify import Notifier
from forkd.web.proxy import Forwarded
from forkd.web.resource import NOT_DONE_YET, UnsupportedMethod
from forkd.web.response import SERVER, ResponseWriter

__all__ = ["SERVER", "Request", "split_path"]

log = logging.getLogger("forkd.web")


def split_path(path: bytes) -> list[bytes]:
    """`/a/b%20c/` -> [b"a", b"b c", b""]: the segments resources are looked up by."""
    segments = path[1:].split(b"/")
    if b"%" in path:
        segments = [unquote_to_bytes(s) for s in segments]
    return segments


class Request(ResponseWriter):
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
        "_query",
        "_raw",
        "_requestHeaders",
        "_args",
        "_content",
        "_bodySize",
        "_bodyHandlers",
        "_streaming",
        "_resource",
        "bodyComplete",
        "_born",
        "forwarded",
    )

    def __init__(
        self,
        channel: Any,
        method: bytes,
        uri: bytes,
        clientproto: bytes,
        rawHeaders: list[tuple[bytes, bytes]],
        keepAlive: bool,
    ) -> None:
        # the headers are complete: the start of the duration that the metrics' histogram
        # (forkd.protocol.stats) and the access log count
        self._born = perf_counter()
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
            if parts.netloc:
                # RFC 9112 3.2.2: the target's host replaces any Host header (so vhosts,
                # getRequestHostname and prePathURL all agree with what was asked for).
                host = parts.netloc.rpartition(b"@")[2]
                rawHeaders = [(n, v) for n, v in rawHeaders if n.lower() != b"host"]
                rawHeaders.append((b"Host", host))
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
        self._content: BinaryIO | None = None
        self._bodySize = 0
        # a resource that streams its body (`streamsBody`) is handed chunks as they arrive
        self._bodyHandlers: (
            tuple[Callable[[bytes], Any], Callable[[], Any], Callable[[], Any] | None] | None
        ) = None
        self._streaming = False
        self._resource: Any = None  # found at the headers, when the body was to be streamed
        self.bodyComplete = False
        self.forwarded: Forwarded | None = None  # what a trusted proxy said (setForwarded)
        self._out: Headers | None = None
        self._chunked = False
        self._keep = keepAlive
        self._notifiers: list[Notifier] | None = None
        self._disconnected = False
        self._sender: Any = None
        self._length = -1

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
    def content(self) -> BinaryIO:
        """The request body, a file positioned at 0 once the request is processed: in memory
        up to `Site.bodyBufferSize`, spooled to a temporary file beyond, so a large body
        costs the worker disk, not memory (Twisted spools bodies the same way)."""
        content = self._content
        if content is None:
            limit = getattr(getattr(self.channel, "_site", None), "bodyBufferSize", 64 * 1024)
            # a rolled-over temporary file is closed when the request is dropped
            spooled: Any = SpooledTemporaryFile(max_size=limit)  # noqa: SIM115
            content = self._content = spooled
        return content

    @content.setter
    def content(self, value: BinaryIO) -> None:
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
                position = self._content.tell()
                self._content.seek(0)
                body = self._content.read()
                self._content.seek(position)
                for key, values in parse_qs(body, keep_blank_values=True).items():
                    args.setdefault(key, []).extend(values)
            self._args = args
        return args

    @args.setter
    def args(self, value: dict[bytes, list[bytes]]) -> None:
        self._args = value

    def setForwarded(self, forwarded: Forwarded) -> None:
        """Believe what a trusted proxy said (the channel calls this; forkd.web.proxy):
        the client's address and scheme, and the Host the client sent it, which replaces
        the proxy's own Host as an absolute-form target's does, so that virtual hosts,
        getRequestHostname, prePathURL and the application all see one host."""
        self.forwarded = forwarded
        if forwarded.host is not None:
            self._raw = [(n, v) for n, v in self._raw if n.lower() != b"host"]
            self._raw.append((b"Host", forwarded.host))
            self._requestHeaders = None

    def getClientAddress(self) -> tuple[Any, ...]:
        """The client as the seed's tuple: ('INET', host, port), ('INET6', ...), ('UNIX',
        path); the peer, unless a trusted proxy said who it was for (port 0 when it did not
        say)."""
        forwarded = self.forwarded
        if forwarded is not None and forwarded.client is not None:
            return forwarded.client
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
        """Whether the client used https (or wss): TLS on this connection, unless a trusted
        proxy said how it was reached."""
        forwarded = self.forwarded
        if forwarded is not None and forwarded.secure is not None:
            return forwarded.secure
        transport = self.channel.transport
        getter = getattr(transport, "get_extra_info", None)
        return bool(getter and getter("sslcontext"))

    def prePathURL(self) -> bytes:
        scheme = b"https" if self.isSecure() else b"http"
        host = self.getHeader(b"host") or self.getRequestHostname()
        return scheme + b"://" + host + b"/" + b"/".join(self.prepath)

    # -- a body streamed to the resource ----------------------------------------------------
    def onBody(
        self,
        received: Callable[[bytes], Any],
        complete: Callable[[], Any],
        failed: Callable[[], Any] | None = None,
    ) -> None:
        """For a resource with `streamsBody = True`, rendered as soon as the headers are in:
        `received(chunk)` for each piece of the body as it arrives (what came before this
        call first), then `complete()`, or `failed()` if the body will never be whole (the
        client went away, or sent more than Site.maxBodySize). `pauseBody()`/`resumeBody()`
        hold the client back while the resource catches up."""
        self._bodyHandlers = (received, complete, failed)
        early = self._content  # what came before: all of it, if the body is already in
        if early is not None:
            early.seek(0)
            data = early.read()
            early.seek(0)
            early.truncate()
            if data:
                received(data)
        if self.bodyComplete:
            self._bodyHandlers = None  # they hold what holds this request: no cycle left
            complete()

    def pauseBody(self) -> None:
        self.channel.pauseBody()

    def resumeBody(self) -> None:
        self.channel.resumeBody()

    def _bodyReceived(self, chunk: bytes) -> None:
        """A piece of the body, from the channel: to the resource's handler, or kept."""
        if self.finished:
            return  # answered already: the rest is read and dropped
        if self._bodyHandlers is not None:
            self._bodyHandlers[0](chunk)
        else:
            self.content.write(chunk)

    def _bodyDone(self) -> None:
        self.bodyComplete = True
        # dropped now: the handlers hold the resource's objects, which hold this request,
        # a cycle that only the garbage collector would otherwise free (per request)
        handlers, self._bodyHandlers = self._bodyHandlers, None
        if handlers is not None and not self.finished:
            handlers[1]()

    def _bodyFailed(self) -> None:
        """The rest of a streamed body will not come: tell the resource, once."""
        handlers, self._bodyHandlers = self._bodyHandlers, None
        if handlers is not None and not self.bodyComplete and handlers[2] is not None:
            handlers[2]()

    # -- processing -----------------------------------------------------------------------
    def process(self) -> None:
        """Find the resource for this request (unless the channel already did), render it,
        and send what it returns."""
        site = self.site
        try:
            resource = self._resource
            if resource is None:
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

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.uri!r} {self.clientproto!r}>"
