"""`WSGIResource`: a PEP 3333 application (Flask, Django, ...) as a forkd.web resource.

    from forkd.web.wsgi import WSGIResource
    site = Site(WSGIResource(flask_app, threads=8))

As Twisted's `twisted.web.wsgi`: the event loop keeps every socket, and the application runs
in a thread pool of the worker (WSGI is blocking by contract). It starts as soon as the
request's headers are in, and reads the body as it arrives (`wsgi.input`, a `BodyInput`:
bounded, the client paused while the application is behind). `close()` is always called
on the returned iterable; an exception before the response started is a 500, after it the
connection is aborted (the client must not take half a body for a whole one).

The pool is bounded, and so is the worker (forkd.web.threadpool): `threads` threads, and
room for `maxWaiting` requests (default: as many) waiting for one; a body still coming
is not read while its request waits. When that many are running and waiting, the worker
stops accepting connections (forkd.listening): they stay in the kernel's listen queue,
shared by every worker, so one with a free thread takes them; accepting resumes, one
connection at a time, when a thread frees. However many clients pile up, a worker holds
only what it can serve soon; a waiting request whose client is seen to leave is dropped,
never run.

What the application returns or writes goes to the loop by a `Handoff`
(forkd.web.handoff), which the loop writes as the client takes it: a slow reader costs
`bufferSize` bytes of memory and a temporary file beyond, never a thread, up to
`spoolSize` bytes waiting (past that the thread waits for the client, and a client that
stops reading is cut by the Site's send timeout). A small response costs the loop one
wake-up however many pieces it comes in.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from forkd.listening import listener_of
from forkd.protocol import stats
from forkd.web.handoff import ClientGone, Handoff
from forkd.web.resource import NOT_DONE_YET, Resource
from forkd.web.threadpool import ThreadPool

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
        self._held = False  # waiting for a thread: nothing more is read meanwhile
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

    def coming(self) -> bool:
        """Whether more of the body is still to arrive."""
        return not self._ended

    def hold(self) -> None:
        """Every thread is busy: read no more of the body until `admit`. A body already
        whole leaves the client read: what could come is a pipelined request (the channel
        bounds those) or the client's leaving, which takes the request out of the line."""
        with self._ready:
            if self._ended:
                return
            self._held = True
            if not self._paused:
                self._paused = True
                self.request.pauseBody()

    def admit(self) -> None:
        """A thread takes the request: the client is read again (unless the body read so
        far is already over the limit)."""
        with self._ready:
            self._held = False
            if self._paused and len(self._chunks) <= self.limit:
                self._paused = False
                self.request.resumeBody()

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
        if self._held:  # not admitted yet: the loop reads the client again on admit
            return
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
    """Renders every request below it with a WSGI application, in `threads` threads.

    At most `maxWaiting` requests (default: as many as there are threads) wait for a
    thread before the worker stops accepting connections (forkd.web.threadpool)."""

    isLeaf = True
    streamsBody = True  # the application reads the body as it arrives (wsgi.input)
    #: response bytes per request kept in memory while the client reads slower than the
    #: application writes; more is spooled to a temporary file (forkd.web.handoff)
    bufferSize = 256 * 1024
    #: response bytes per request waiting for the client (memory and file) before the
    #: application's thread waits too (waitress's outbuf_high_watermark)
    spoolSize = 16 * 1024 * 1024
    maxWaiting: int | None = None  # a resource pickled before it existed has the default

    def __init__(
        self,
        application: WSGIApplication,
        threads: int = 8,
        root_path: str = "",
        maxWaiting: int | None = None,
    ) -> None:
        super().__init__()
        if threads < 1:
            raise ValueError("a WSGIResource needs at least one thread")
        self.application = application
        self.threads = threads
        #: where a proxy mounts the application (gunicorn's SCRIPT_NAME, uvicorn's
        #: --root-path): see script_and_path
        self.root_path = root_path
        self.maxWaiting = maxWaiting
        self._pool: ThreadPool | None = None

    def __getstate__(self) -> dict[str, Any]:  # a tap pickles the application, not threads
        state = self.__dict__.copy()
        state["_pool"] = None
        return state

    @property
    def pool(self) -> ThreadPool:
        """The worker's threads for this application: made after fork (threads do not
        survive it), on the first request."""
        pool = self._pool
        if pool is None:
            waiting = self.threads if self.maxWaiting is None else self.maxWaiting
            pool = self._pool = ThreadPool(self.threads, waiting, "wsgi")
            stats.probes.append(self.gauges)
        return pool

    def render(self, request: Any) -> Any:
        pool = self.pool
        loop = asyncio.get_running_loop()
        body = BodyInput(request, loop)
        request.onBody(body.feed, body.end, body.fail)
        output = Handoff(request, loop, pool.threadFree, self.bufferSize, self.spoolSize)
        response = _Response(self.application, request, body, output, self.root_path)
        listener = listener_of(request.channel.server)
        waiting = pool.run(response.run, body.hold, body.admit, body.coming, listener)
        if waiting is not None:  # a client that leaves the line does not cost a thread later
            request.notifyFinish().addErrback(lambda _reason: pool.cancel(waiting))
        return NOT_DONE_YET

    def gauges(self) -> dict[str, float]:
        """Busy and all threads, for the worker's heartbeat (forkd_wsgi_threads)."""
        busy = self._pool.busy if self._pool is not None else 0
        return {"wsgi_threads": self.threads, "wsgi_threads_busy": min(busy, self.threads)}


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
    """One request's run of the application in a thread; its output goes to the loop by
    a Handoff."""

    def __init__(
        self,
        application: WSGIApplication,
        request: Any,
        body: BodyInput,
        output: Handoff,
        root_path: str = "",
    ) -> None:
        self.application = application
        self.output = output
        self.environ = environ_for(request, body, root_path)
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.started = False  # status and headers handed to the loop

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
            self.output.data(bytes(data))

    def _start(self) -> None:
        if not self.started:
            self.started = True
            assert self.status is not None
            self.output.head(self.status, self.headers)

    def run(self) -> None:
        """In a thread of the pool. Whatever happens, the output's end tells the loop that
        this thread is free (forkd.web.threadpool counts on it)."""
        output = self.output
        ok = False
        try:
            if output.clientLeft():  # gone while it waited for a thread: nobody to answer
                ok = True
                return
            self._run()
            ok = True
        except ClientGone:
            ok = True  # nobody to answer: not the application's failure
        except Exception:
            log.exception("WSGI application failed on %s", self.environ.get("PATH_INFO"))
        finally:
            output.end(ok)

    def _run(self) -> None:
        result = self.application(self.environ, self.start_response)
        if isinstance(result, FileWrapper) and self.status is not None and not self.started:
            sendable = result.sendable()
            if sendable is not None:  # the file goes whole, by sendfile, which closes it
                self._start()
                self.output.sendfile(result.filelike, *sendable)
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
