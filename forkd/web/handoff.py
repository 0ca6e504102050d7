"""`Handoff`: a response made in a thread and written to the client by the event loop.

The thread (a WSGI application's, forkd.web.wsgi) puts the status and headers, the body
pieces, a file to send, and the end; the loop writes them. So a slow client costs the
worker memory for a while, never a thread, and the memory is bounded:

- what the thread puts since the loop last looked is taken in one wake-up (the first put
  schedules it, the others ride along): a small response costs one
  `call_soon_threadsafe`, whatever the number of pieces;
- the loop writes to the transport while the transport takes it; once the transport is
  over its high-water mark (the handoff is the channel's producer: paused and resumed with
  the write buffer), pieces wait in a `Spool`: `bufferSize` bytes in memory, then a
  temporary file;
- the thread gets ahead of the loop by `bufferSize` bytes at most (it waits a moment for
  the loop to take them), so what the worker holds in memory for a response is about
  two buffers and the transport's, however fast the application and slow the client;
- only a response that has `spoolSize` bytes waiting holds its thread: `put` blocks until
  the client has taken some (as a PEP 3333 `write()` may). A client that stops reading
  altogether is cut by the channel's send timeout, which releases the thread;
- once the client is gone, the next `put` raises `ClientGone`: the application stops
  producing for nobody.

`threadFree` is called in the loop with the end (or the failure): the thread is free
then, even while the spool still drains to a slow client.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from forkd.web.spool import Spool

__all__ = ["ClientGone", "Handoff"]

CHUNK = 64 * 1024  # bytes per write while the spool drains


class Item(enum.IntEnum):
    """What the thread hands the loop."""

    HEAD = 0
    DATA = 1
    FILE = 2
    END = 3
    FAIL = 4


class ClientGone(Exception):
    """The client went away: there is no one to send the rest of the response to."""


class Handoff:
    """One response's way from its thread to the loop.

    Nothing is locked on the way: the thread appends to a deque and counts what it put,
    the loop pops and counts what it took and wrote; each counter has one writer (which
    the GIL makes safe). A lock is taken only to wait. The state starts as the class's
    defaults below, so a response costs a handful of stores, not two dozen."""

    # the thread's side
    _scheduled = False  # a flush is on its way to the loop
    _put = 0  # body bytes the thread put (the thread writes it)
    _ended = False  # the thread put its end
    _waits = False  # the thread sleeps on _wake (set under it)
    _wake: threading.Condition | None = None
    threadWaiting = False  # the thread waits for the client to take some
    threadAhead = False  # the thread waits for the loop to take what it put
    # the loop's side
    _taken = 0  # of the bytes put, those taken from the deque
    _written = 0  # of those, written to the transport or dropped
    _gone = False  # the client went away
    _spool: Spool | None = None
    _paused = False
    _producing = False  # registered as the channel's producer
    _ending = False  # the end is in: finish once the spool is empty
    _watching = False  # notifyFinish registered (once something is spooled)
    _sentfile = False  # a FileSender finishes the request, not the end

    def __init__(
        self,
        request: Any,
        loop: Any,
        threadFree: Callable[[], None],
        bufferSize: int = 256 * 1024,
        spoolSize: int = 16 * 1024 * 1024,
    ) -> None:
        self.request = request
        self.loop = loop
        self.threadFree = threadFree
        self.bufferSize = bufferSize
        self.spoolSize = spoolSize
        self._items: deque[tuple[Item, Any]] = deque()

    # -- the thread's side ----------------------------------------------------------------
    def head(self, status: str, headers: list[tuple[str, str]]) -> None:
        """The status and headers: they go with what follows (nothing is sent before a
        first piece of the body, or the end), so they do not wake the loop on their own."""
        self._items.append((Item.HEAD, (status, headers)))

    def data(self, data: bytes) -> None:
        """A piece of the body; waits while `spoolSize` bytes wait for the client."""
        self._hand(Item.DATA, data, len(data))

    def sendfile(self, file: Any, offset: int, count: int) -> None:
        self._hand(Item.FILE, (file, offset, count))

    def clientLeft(self) -> bool:
        """Whether the client is known to be gone (read in the thread: a moment stale at
        worst), so a request queued for a thread can skip the application."""
        return bool(self._gone or self.request._disconnected)

    def end(self, ok: bool = True) -> None:
        """The response is complete (or, not `ok`, failed); only the first call counts."""
        if self._ended:
            return
        self._ended = True
        try:
            self._hand(Item.END if ok else Item.FAIL, None)
        except ClientGone:  # threadFree must still come: the loop is told anyway
            with contextlib.suppress(ClientGone):
                self._hand(Item.FAIL, None, force=True)

    def _hand(self, kind: Item, value: Any, size: int = 0, force: bool = False) -> None:
        if self._gone and not force:
            raise ClientGone()
        self._items.append((kind, value))
        if size:
            self._put += size
        if not self._scheduled:  # read after the append: a flush that cleared it sees it
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop is closed: the worker is gone
                raise ClientGone() from None
        if size and (
            self._put - self._written > self.spoolSize or self._put - self._taken > self.bufferSize
        ):
            self._wait()

    def _wait(self) -> None:
        """Sleep while `spoolSize` bytes wait for the client, or `bufferSize` for the loop
        (a moment: what is in memory for the thread stays one buffer)."""
        wake = self._wake
        if wake is None:
            wake = self._wake = threading.Condition(threading.Lock())
        with wake:
            self._waits = True
            try:
                while not self._gone:
                    if self._put - self._written > self.spoolSize:
                        self.threadWaiting = True
                    elif self._put - self._taken > self.bufferSize:
                        self.threadAhead = True
                    else:
                        break
                    wake.wait()
                    self.threadWaiting = self.threadAhead = False
            finally:
                self._waits = self.threadWaiting = self.threadAhead = False
        if self._gone:
            raise ClientGone()

    def _wakeThread(self) -> None:
        wake = self._wake
        if self._waits and wake is not None:
            with wake:
                wake.notify_all()

    # -- the loop's side ------------------------------------------------------------------
    def _flush(self) -> None:
        self._scheduled = False  # before the items: the thread appends, then looks
        items = self._items
        written = taken = 0
        while items:
            kind, value = items.popleft()
            if kind is Item.DATA:
                taken += len(value)
                written += self._data(value)
            elif kind is Item.HEAD:
                self._head(*value)
            elif kind is Item.FILE:
                self._sendfile(*value)
            elif kind is Item.END:
                self._ending = True
                self.threadFree()
            else:
                self._failed()
                self.threadFree()
        if taken:
            self._taken += taken
            self._written += written
            self._wakeThread()
        if self._ending:
            self._finishIfDrained()
        elif not self._producing and taken and not self._gone:
            # More is to come: be paused with the write buffer from here on (at once if
            # it is over its mark). A response whole in one flush never needs it: what a
            # flush writes is at most a buffer, the thread being held to that.
            self._producing = True
            self.request.channel.registerProducer(self)

    def _open(self) -> bool:
        request = self.request
        if request.finished or request._disconnected:
            self._lost()
            return False
        return True

    def _head(self, status: str, headers: list[tuple[str, str]]) -> None:
        request = self.request  # set on a request already gone, it is simply not sent
        request.setResponseCode(int(status[:3]), status[4:].encode("latin-1") or None)
        add = request.responseHeaders.addRawHeader
        for name, value in headers:
            add(name.encode("latin-1"), value.encode("latin-1"))

    def _data(self, data: bytes) -> int:
        """Write `data` now, or spool it; the bytes no longer held for the thread."""
        if not self._open():
            return len(data)
        spool = self._spool
        if self._paused or spool:
            if spool is None:
                spool = self._spool = Spool(self.bufferSize)
            spool.append(data)
            if not self._watching:  # a slow client: hear at once if it goes
                self._watching = True
                self.request.notifyFinish().addErrback(self._gave_up)
            return 0
        self.request.write(data)
        return len(data)

    def _sendfile(self, file: Any, offset: int, count: int) -> None:
        if not self._open():
            file.close()
            return
        request = self.request
        length = request.responseHeaders.getRawHeaders(b"content-length")
        if length:
            count = min(count, int(length[-1]))
        else:
            request.setHeader(b"content-length", b"%d" % count)
        self._ending = False  # the file sender finishes the request itself
        self._sentfile = True
        request.sendfile(file, offset, count)

    def _failed(self) -> None:
        self._ending = False
        self._discard()
        if self._open():
            self.request._failed()  # a 500 if nothing is out yet, else the connection is cut

    def _finishIfDrained(self) -> None:
        if self._spool or self._sentfile:
            return
        self._ending = False
        if self._producing or self._spool is not None:
            self._discard()
        if self._open():
            request = self.request
            if request.method == b"HEAD" and not request.startedWriting:
                # The application dropped HEAD's body itself (Werkzeug, Django do): finish()
                # would measure that nothing and send Content-Length: 0, a length GET does
                # not have (RFC 9110 8.6). Start it as a stream: only the app's own length.
                request.write(b"")
            request.finish()

    def _release(self, size: int) -> None:
        self._written += size
        self._wakeThread()

    def _discard(self) -> None:
        if self._producing:
            self._producing = False
            self.request.channel.unregisterProducer()
        spool, self._spool = self._spool, None
        if spool is not None:
            size = len(spool)
            spool.close()
            self._release(size)

    def _gave_up(self, reason: Any) -> None:
        self._lost()

    def _lost(self) -> None:
        """The client is gone: drop what waits for it, and stop the thread producing."""
        self._ending = False
        self._discard()
        self._gone = True
        self._wakeThread()

    # -- a producer for the channel: paused and resumed with the write buffer ----------------
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        spool = self._spool
        if spool is None:
            return
        written = 0
        while spool and not self._paused and self._open():
            data = spool.take(CHUNK)
            self.request.write(data)
            written += len(data)
        if written:
            self._release(written)
        if self._spool is not None and not self._spool:
            self._spool.close()
            self._spool = None
        if self._ending:
            self._finishIfDrained()

    def stopProducing(self) -> None:
        self._lost()
