"""`ASGIResource`: an ASGI 3 application (FastAPI, Starlette, ...) as a forkd.web resource.

    from forkd.web.asgi import ASGIResource
    site = Site(ASGIResource(fastapi_app))

The application runs as a task on the worker's own event loop, one per request: no thread,
no second loop. It is called as soon as the request's headers are in; `receive()` yields
the body as it arrives (`http.request` with `more_body`), then waits for the client to
leave (`http.disconnect`); `send()` turns `http.response.start` and `http.response.body`
into the forkd.web response, and waits while the client reads slower than the application
writes (the channel pauses and resumes it with its write buffer). `Lifespan` runs the
application's startup in each worker before it serves and its shutdown when it drains;
the state it sets is copied into every request's scope. An upgrade request becomes a
WebSocket session (forkd.web.asgi_websocket) on the same loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from forkd.web.asgi_websocket import WebSocketSession
from forkd.web.resource import NOT_DONE_YET, Resource
from forkd.web.websocket import is_websocket_upgrade

__all__ = ["ASGIResource"]

log = logging.getLogger("forkd.web.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApplication = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


class LifespanFailed(Exception):
    """The application's lifespan startup failed: the worker must not serve it."""


class Lifespan:
    """The ASGI lifespan protocol for one worker: `startup()` before serving, `shutdown()`
    when draining. An application that does not speak it (it raises on the lifespan scope
    without sending anything) is served without, as uvicorn's `--lifespan auto` does."""

    def __init__(self, application: ASGIApplication, state: dict[str, Any]) -> None:
        self.application = application
        self.state = state
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.supported = True

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        try:
            await self.application(scope, self._inbox.get, self._outbox.put)
        except Exception as error:
            self.supported = False
            await self._outbox.put({"type": "lifespan.unsupported", "message": repr(error)})
        else:  # it returned: whatever it has not answered yet, it never will
            await self._outbox.put({"type": "lifespan.unsupported", "message": "it returned"})

    async def _exchange(self, ask: str) -> Message:
        await self._inbox.put({"type": ask})
        return await self._outbox.get()

    async def startup(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        answer = await self._exchange("lifespan.startup")
        kind = answer.get("type")
        if kind == "lifespan.startup.failed":
            raise LifespanFailed(f"lifespan startup failed: {answer.get('message', '')}")
        if kind == "lifespan.unsupported":
            log.info("the application does not use lifespan (%s)", answer.get("message"))

    async def shutdown(self) -> None:
        if self._task is None or not self.supported or self._task.done():
            return
        answer = await self._exchange("lifespan.shutdown")
        if answer.get("type") == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: %s", answer.get("message", ""))
        await self._task


class ASGIResource(Resource):
    """Renders every request below it with an ASGI 3 application."""

    isLeaf = True
    streamsBody = True

    def __init__(self, application: ASGIApplication, root_path: str = "") -> None:
        super().__init__()
        self.application = application
        self.root_path = root_path
        self.state: dict[str, Any] = {}  # what lifespan startup set, copied per request
        self._tasks: set[asyncio.Task[None]] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tasks"] = set()
        return state

    def render(self, request: Any) -> Any:
        scope = scope_for(request, self.root_path)
        scope["state"] = dict(self.state)
        exchange: _Exchange | WebSocketSession
        if is_websocket_upgrade(request):
            exchange = WebSocketSession(self.application, request, scope)
        else:
            exchange = _Exchange(self.application, request, scope)
        task = asyncio.get_running_loop().create_task(exchange.run())
        self._tasks.add(task)  # held until done: a task nobody references may be collected
        task.add_done_callback(self._tasks.discard)
        return NOT_DONE_YET


def scope_for(request: Any, root_path: str = "") -> Scope:
    """The ASGI HTTP scope of a forkd.web request.

    With a `root_path` (where a proxy mounts the application), `path` includes it, as
    ASGI 3 and uvicorn have it: a path that does not begin with it is taken as one the
    proxy stripped, and gets it back in front (see forkd.web.wsgi.script_and_path)."""
    client, server = _addresses(request)
    raw_path = request.path
    if root_path:
        root = root_path.encode("latin-1")
        if raw_path != root and raw_path[: len(root) + 1] != root + b"/":
            raw_path = root + raw_path
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": _HTTP_VERSIONS.get(request.clientproto, "1.1"),
        "method": request.method.decode("latin-1"),
        "scheme": "https" if request.isSecure() else "http",
        "path": unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
        if b"%" in raw_path
        else raw_path.decode("utf-8", "surrogateescape"),
        "raw_path": raw_path,
        "query_string": request.query,
        "root_path": root_path,
        # ASGI: names lowercased, values as sent (the parser's own pairs, in order)
        "headers": [(name.lower(), value) for name, value in request._raw],
        "client": client,
        "server": server,
        "state": {},
        "extensions": {"http.response.pathsend": {}},
    }


_HTTP_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}


def _addresses(request: Any) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """The scope's `client` and `server`: the (proxied) client's and this end's address.
    This end's is the same for every request of a connection, so it is kept on it."""
    channel = request.channel
    known = getattr(channel, "_asgiServer", None)
    if known is None:
        host = request.getHost()
        known = channel._asgiServer = ((str(host[1]), int(host[2])) if len(host) > 2 else (),)
    server: tuple[str, int] | None = known[0] or None
    peer = request.getClientAddress()
    return (str(peer[1]), int(peer[2])) if len(peer) > 2 else None, server


class _Exchange:
    """One request's run of the application: its receive() and send().

    Light, because every request makes one: the body waits in a deque, and one Event,
    made only if receive() has to wait, wakes it for a chunk, the body's end or the
    client leaving."""

    def __init__(self, application: ASGIApplication, request: Any, scope: Scope) -> None:
        self.application = application
        self.request = request
        self.scope = scope
        self.chunks: deque[bytes | None] = deque()  # None: the end of the body
        self.wake: asyncio.Event | None = None
        self.left = False  # the client went away, or the response is complete
        self.writable: asyncio.Event | None = None
        self.body_done = False
        self.started = False
        self.finished = False
        request.onBody(self._fed, self._ended, self._leave)
        request.notifyFinish().addErrback(lambda reason: self._leave())

    def _fed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if self.wake is not None:
            self.wake.set()

    def _ended(self) -> None:
        self._fed(None)  # type: ignore[arg-type]

    def _leave(self) -> None:
        self.left = True
        if self.wake is not None:
            self.wake.set()
        if self.writable is not None:
            self.writable.set()  # a send() waiting for the client must not wait for ever

    # the channel pauses and resumes a registered producer with its write buffer
    def pauseProducing(self) -> None:
        if self.writable is not None:
            self.writable.clear()

    def resumeProducing(self) -> None:
        if self.writable is not None:
            self.writable.set()

    async def receive(self) -> Message:
        while True:
            if self.chunks and not self.body_done:
                chunk = self.chunks.popleft()
                if chunk is None:
                    self.body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                if not self.chunks or self.chunks[0] is not None:
                    return {"type": "http.request", "body": chunk, "more_body": True}
                self.chunks.popleft()  # the last chunk: say so with it
                self.body_done = True
                return {"type": "http.request", "body": chunk, "more_body": False}
            if self.left:
                return {"type": "http.disconnect"}
            wake = self.wake
            if wake is None:
                wake = self.wake = asyncio.Event()
            wake.clear()
            await wake.wait()

    async def send(self, message: Message) -> None:
        request = self.request
        kind = message.get("type")
        if (self.finished or request._disconnected) and kind == "http.response.body":
            return  # the client left: what the app sends is dropped, as servers do
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            request.setResponseCode(int(message["status"]))
            for name, value in message.get("headers", ()):
                request.responseHeaders.addRawHeader(bytes(name), bytes(value))
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            body = bytes(message.get("body", b""))
            if not message.get("more_body", False):
                self._finished()
                if not request.startedWriting:
                    request._respond(body)  # the whole response in one write, with its length
                    return
                if body:
                    request.write(body)
                request.finish()
                return
            if body:
                request.write(body)
            if request.channel.writePaused:
                await self._drained()
        elif kind == "http.response.pathsend":
            if not self.started or self.finished:
                raise RuntimeError("http.response.pathsend outside a response")
            self._pathsend(str(message["path"]))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an HTTP request")

    def _finished(self) -> None:
        """The response is complete: from now on receive() says http.disconnect, as
        uvicorn's does, so a task of the application waiting on it (Starlette listens
        for the disconnect while it streams) ends instead of waiting for ever."""
        self.finished = True
        self._leave()

    def _pathsend(self, path: str) -> None:
        """The `http.response.pathsend` extension: the file at `path` is the whole body,
        sent by sendfile (zero copy) from the event loop."""
        request = self.request
        file = open(path, "rb")  # noqa: SIM115 - closed by the sender when the body is out
        try:
            size = os.fstat(file.fileno()).st_size
        except OSError:
            file.close()
            raise
        self._finished()
        declared = request.responseHeaders.getRawHeaders(b"content-length")
        if declared:
            size = min(size, int(declared[-1]))
        else:
            request.setHeader(b"content-length", b"%d" % size)
        request.sendfile(file, 0, size)

    async def _drained(self) -> None:
        """Wait while the client reads slower than the application writes."""
        channel = self.request.channel
        writable = self.writable
        if writable is None:
            writable = self.writable = asyncio.Event()
        writable.clear()
        channel.registerProducer(self)
        try:
            if channel.writePaused and not self.left:
                await writable.wait()
        finally:
            channel.unregisterProducer()

    async def run(self) -> None:
        request = self.request
        try:
            await self.application(self.scope, self.receive, self.send)
        except Exception:
            log.exception("ASGI application failed on %s", self.scope["path"])
            if not self.finished and not request._disconnected:
                request._failed()  # a 500 if nothing is out yet, else the connection is cut
            return
        if not self.finished and not request._disconnected:
            if not self.started:  # returned without a response: a 500, as uvicorn does
                log.error("ASGI application returned no response for %s", self.scope["path"])
                request.setResponseCode(500)
            request.finish()
