"""`WSGIResource`: a PEP 3333 application (Flask, Django, ...) as a forkd.web resource.

    from forkd.web.wsgi import WSGIResource
    site = Site(WSGIResource(flask_app, threads=8))

As Twisted's `twisted.web.wsgi`: the event loop keeps every socket, and the application runs
in a thread pool of the worker (WSGI is blocking by contract). It starts as soon as the
request's headers are in, and reads the body as it arrives (`wsgi.input`, a `BodyInput`:
bounded, the client paused while the application is behind); what the application
returns or writes is handed back to the loop in order, so a slow reader costs memory in
the loop, never a thread. `close()` is always called on
the returned iterable; an exception before the response started is a 500, after it the
connection is aborted (the client must not take half a body for a whole one).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from forkd.protocol import stats
from forkd.web.resource import NOT_DONE_YET, Resource

__all__ = ["WSGIResource"]

log = logging.getLogger("forkd.web.wsgi")

# RFC 9110 7.6.1: connection-specific fields, which only the server may send (PEP 3333)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
     "trailers", "transfer-encoding", "upgrade"}
)  # fmt: skip

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Errors(io.TextIOBase):
    """`wsgi.errors`: what the application writes goes to forkd's log, line by line."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                log.error("%s", line)
        return len(text)


class BodyInput:
    """`wsgi.input`: the request body as it arrives, read by the application's thread.

    The loop feeds it (`feed`, `end`, `fail`); a thread reads it, waiting for more when it
    has caught up. Beyond `limit` bytes not yet read the client is paused, and resumed once
    the application has read half of it: the body is streamed, and bounded, and a
    multi-MiB upload costs neither a buffer of its size nor a thread while it trickles in."""

    def __init__(self, request: Any, loop: Any, limit: int = 256 * 1024) -> None:
        self.request = request
        self.loop = loop
        self.limit = limit
        self._chunks = bytearray()
        self._ended = False
        self._failed = False
        self._paused = False
        self._ready = threading.Condition()

    # -- the loop's side ------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        with self._ready:
            self._chunks += chunk
            if len(self._chunks) > self.limit and not self._paused:
                self._paused = True
                self.request.pauseBody()
            self._ready.notify_all()

    def end(self) -> None:
        with self._ready:
            self._ended = True
            self._ready.notify_all()

    def fail(self) -> None:
        with self._ready:
            self._failed = self._ended = True
            self._ready.notify_all()

    # -- the application's side -----------------------------------------------------------
    def _take(self, size: int, upto: bytes | None = None) -> bytes:
        """Up to `size` bytes (all, if negative), or through the first `upto`. A read that
        wants more than the paused buffer holds takes what is there and lets the client
        send on, or `read()` of a body larger than `limit` would wait for ever."""
        taken = bytearray()
        with self._ready:
            buffered = self._chunks
            while True:
                if self._failed:
                    raise OSError("the client went away before the request body was whole")
                want = -1 if size < 0 else size - len(taken)
                end = len(buffered) if want < 0 else min(want, len(buffered))
                if upto is not None:
                    found = buffered.find(upto, 0, end)
                    if found >= 0:
                        end = found + len(upto)
                        break
                if self._ended or (want >= 0 and len(buffered) >= want):
                    break
                if self._paused:  # the application asked for this much: it holds it now
                    taken += buffered
                    del buffered[:]
                    self._resume()
                self._ready.wait()
            taken += buffered[:end]
            del buffered[:end]
            if self._paused and len(buffered) <= self.limit // 2:
                self._resume()
        return bytes(taken)

    def _resume(self) -> None:
        self._paused = False
        self.loop.call_soon_threadsafe(self.request.resumeBody)

    def read(self, size: int | None = -1) -> bytes:
        return self._take(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(-1 if size is None else size, upto=b"\n")

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 <= hint <= total:
                break
        return lines

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class FileWrapper:
    """`wsgi.file_wrapper`: a file the application returns whole. Iterated like any
    response by a server that cannot do better; forkd sends a real file with sendfile
    (zero copy) instead, from where it stands to its end."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Any:
        return iter(lambda: self.filelike.read(self.blksize), b"")

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def sendable(self) -> tuple[int, int] | None:
        """(offset, count) when the file can go by sendfile: a regular file with a fileno."""
        try:
            fd = self.filelike.fileno()
            offset = self.filelike.tell()
            size = os.fstat(fd).st_size
        except (AttributeError, OSError, ValueError):
            return None
        return (offset, size - offset) if size >= offset else None


class WSGIResource(Resource):
    """Renders every request below it with a WSGI application, in `threads` threads."""

    isLeaf = True
    streamsBody = True  # the application reads the body as it arrives (wsgi.input)

    def __init__(self, application: WSGIApplication, threads: int = 8, root_path: str = "") -> None:
        super().__init__()
        self.application = application
        self.threads = threads
        #: where a proxy mounts the application (gunicorn's SCRIPT_NAME, uvicorn's
        #: --root-path): see script_and_path
        self.root_path = root_path
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:  # a tap pickles the application, not threads
        state = self.__dict__.copy()
        state["_pool"] = None
        for runtime in ("_counting", "_submitted", "_finished"):
            state.pop(runtime, None)
        return state

    def render(self, request: Any) -> Any:
        if self._pool is None:  # made in the worker, after fork: threads do not survive it
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="wsgi")
            self._submitted = 0
            self._finished = 0
            self._counting = threading.Lock()
            stats.probes.append(self.gauges)
        loop = asyncio.get_running_loop()
        body = BodyInput(request, loop)
        request.onBody(body.feed, body.end, body.fail)
        response = _Response(self.application, request, loop, body, self.root_path)
        self._submitted += 1
        self._pool.submit(response.run).add_done_callback(self._done)
        return NOT_DONE_YET

    def _done(self, future: Any) -> None:  # in the thread that ran it
        with self._counting:
            self._finished += 1

    def gauges(self) -> dict[str, float]:
        """Busy and all threads, for the worker's heartbeat (forkd_wsgi_threads)."""
        running = self._submitted - self._finished
        return {"wsgi_threads": self.threads, "wsgi_threads_busy": min(running, self.threads)}


def script_and_path(request: Any, root_path: str = "") -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO: the resource's mount point (without a trailing slash)
    and the rest of the path, decoded (PEP 3333; latin-1 native strings).

    `root_path` is where a proxy mounts the whole site. A proxy may pass that prefix on
    (as gunicorn's SCRIPT_NAME expects) or take it off (as uvicorn's --root-path
    expects): a path that begins with it is split there, any other is taken as already
    stripped and gets it as its SCRIPT_NAME. Both kinds of deployment work unchanged."""
    script = (b"/" + b"/".join(request.prepath)).rstrip(b"/") if request.prepath else b""
    rest = request.path[len(script) :]
    if root_path:
        root = root_path.encode("latin-1")
        if not script and (rest == root or rest[: len(root) + 1] == root + b"/"):
            script, rest = root, rest[len(root) :]
        else:
            script = root + script
    if b"%" in rest:
        rest = unquote_to_bytes(rest)
    return script.decode("latin-1"), rest.decode("latin-1")


def environ_for(request: Any, body: Any = None, root_path: str = "") -> dict[str, Any]:
    """The PEP 3333 environ of a forkd.web request (native strings, latin-1 as the PEP says)."""
    host = request.getHost()
    peer = request.getClientAddress()
    script, path_info = script_and_path(request, root_path)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("latin-1"),
        "SCRIPT_NAME": script,
        "PATH_INFO": path_info,
        "QUERY_STRING": request.query.decode("latin-1"),
        "SERVER_NAME": request.getRequestHostname().decode("latin-1"),
        "SERVER_PORT": str(host[2]) if len(host) > 2 else "",
        "SERVER_PROTOCOL": request.clientproto.decode("latin-1"),
        "REMOTE_ADDR": str(peer[1]) if len(peer) > 1 else "",
        "REMOTE_PORT": str(peer[2]) if len(peer) > 2 else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if request.isSecure() else "http",
        "wsgi.input": request.content if body is None else body,
        "wsgi.input_terminated": True,  # read() to EOF ends with the body, chunked or not
        "wsgi.errors": _Errors(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
    }
    for name, values in request.requestHeaders.getAllRawHeaders():
        if b"_" in name:  # X_User would pass for X-User in the environ (gunicorn drops them)
            continue
        key = name.decode("latin-1").upper().replace("-", "_")
        value = ",".join(v.decode("latin-1") for v in values)
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            environ[key] = value
        else:
            environ["HTTP_" + key] = value
    return environ


class _Response:
    """One request's run of the application in a thread, and its way back to the loop."""

    def __init__(
        self,
        application: WSGIApplication,
        request: Any,
        loop: Any,
        body: BodyInput,
        root_path: str = "",
    ) -> None:
        self.application = application
        self.request = request
        self.loop = loop
        self.environ = environ_for(request, body, root_path)
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.started = False  # status and headers handed to the loop

    def _in_loop(self, call: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(call, *args)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # PEP 3333: no reference cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit():
            raise ValueError(f"bad WSGI status {status!r}")
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"WSGI header {name!r}: {value!r}: names and values are str")
            if name.lower() in HOP_BY_HOP:
                raise ValueError(f"a WSGI application may not set the {name} header")
        self.status, self.headers = status, list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        """The `write()` callable, and every chunk of the returned iterable."""
        if self.status is None:
            raise AssertionError("write() before start_response")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"a WSGI application must write bytes, not {type(data).__name__}")
        self._start()
        if data:
            self._in_loop(self._write, bytes(data))

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self._in_loop(self._send_head, self.status, self.headers)

    def run(self) -> None:
        try:
            result = self.application(self.environ, self.start_response)
            if isinstance(result, FileWrapper) and self.status is not None and not self.started:
                sendable = result.sendable()
                if sendable is not None:  # the file goes whole, by sendfile, which closes it
                    self.started = True
                    self._in_loop(self._send_head, self.status, self.headers)
                    self._in_loop(self._sendfile, result.filelike, *sendable)
                    return
            try:
                for chunk in result:
                    self.write(chunk)
                if self.status is None:
                    raise AssertionError("the application returned without start_response")
                self._start()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            log.exception("WSGI application failed on %s", self.environ.get("PATH_INFO"))
            self._in_loop(self._fail)
            return
        self._in_loop(self._finish)

    # -- in the loop ----------------------------------------------------------------------
    def _send_head(self, status: str, headers: list[tuple[str, str]]) -> None:
        request = self.request
        if request.finished or request._disconnected:
            return
        request.setResponseCode(int(status[:3]), status[4:].encode("latin-1") or None)
        for name, value in headers:
            request.responseHeaders.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))

    def _sendfile(self, file: Any, offset: int, count: int) -> None:
        request = self.request
        if request.finished or request._disconnected:
            file.close()
            return
        length = request.responseHeaders.getRawHeaders(b"content-length")
        if length:
            count = min(count, int(length[-1]))
        else:
            request.setHeader(b"content-length", b"%d" % count)
        request.sendfile(file, offset, count)

    def _write(self, data: bytes) -> None:
        request = self.request
        if not request.finished and not request._disconnected:
            request.write(data)

    def _finish(self) -> None:
        request = self.request
        if not request.finished and not request._disconnected:
            if request.method == b"HEAD" and not request.startedWriting:
                # The application dropped HEAD's body itself (Werkzeug, Django do): finish()
                # would measure that nothing and send Content-Length: 0, a length GET does
                # not have (RFC 9110 8.6). Start it as a stream: only the app's own length.
                request.write(b"")
            request.finish()

    def _fail(self) -> None:
        request = self.request
        if not request.finished and not request._disconnected:
            request._failed()  # a 500 if nothing is out yet, else the connection is cut
