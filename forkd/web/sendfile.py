"""FileSender: sends part of an open file as a response body, zero-copy when it can.

Zero-copy: when the connection is a real socket and nothing is waiting in the transport's
write buffer (so bytes cannot be reordered), `os.sendfile` moves the file straight from the
page cache to the socket. It runs on a dup of the socket's descriptor, because event loops
refuse reader/writer callbacks on a descriptor a transport owns; when the socket is full
(EAGAIN) it waits for writability with `loop.add_writer` on that dup. Nothing else writes to
the connection meanwhile: later pipelined responses wait for this request to finish. While
it waits, `unsent` tells the channel's send timeout how much is left, so a peer that stops
reading is cut after Site.sendTimeout (forkd.web.outqueue).

Otherwise (a fake transport in tests, an SSL transport, data already buffered) it copies:
`os.pread` chunks into `request.write`, registered as the channel's producer so it pauses
while the write buffer is over its high-water mark and resumes when the peer catches up.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

CHUNK = 64 * 1024
SENDFILE_CHUNK = 4 * 1024 * 1024


def _extra_info(transport: Any, name: str) -> Any:
    """transport.get_extra_info(name), or None for fakes that have no such method."""
    getter = getattr(transport, "get_extra_info", None)
    return getter(name) if getter is not None else None


class FileSender:
    """Sends `count` bytes of `file` from `offset` on `request`'s connection, then finishes."""

    def __init__(self, request: Any, file: Any, offset: int, count: int) -> None:
        self.request = request
        self.file = file
        self.fileno = file.fileno()
        self.offset = offset
        self.remaining = count
        self.paused = False
        self.stopped = False
        self._sock = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting = False
        self._scheduled = False

    def start(self) -> None:
        channel = self.request.channel
        transport = channel.transport
        sock = _extra_info(transport, "socket")
        buffered = getattr(transport, "getWriteBufferSize", None)
        if (
            sock is not None
            and buffered is not None
            and hasattr(os, "sendfile")
            and _extra_info(transport, "sslcontext") is None
            and buffered() == 0
        ):
            try:
                self._loop = asyncio.get_running_loop()
                self._sock = os.dup(sock.fileno())
            except (RuntimeError, OSError):
                self._sock = -1
            if self._sock >= 0:
                self._send()
                return
        channel.registerProducer(self)
        self._copy()

    @property
    def unsent(self) -> int:
        """Bytes still to send while the zero-copy path waits for the socket, else 0 (the
        copying path's bytes are in the transport's buffer, counted there)."""
        return self.remaining if self._waiting and not self.stopped else 0

    # -- zero copy ------------------------------------------------------------------------
    def _send(self) -> None:
        request = self.request
        while self.remaining > 0 and not self.stopped:
            try:
                sent = os.sendfile(
                    self._sock, self.fileno, self.offset, min(self.remaining, SENDFILE_CHUNK)
                )
            except BlockingIOError:
                if not self._waiting:
                    assert self._loop is not None
                    self._loop.add_writer(self._sock, self._send)
                    self._waiting = True
                return
            except InterruptedError:
                continue
            except OSError:
                self._abort()
                return
            if sent == 0:  # the file shrank under us: the promised length cannot be met
                self._abort()
                return
            self.offset += sent
            self.remaining -= sent
            request.sentLength += sent
        if not self.stopped:
            self.stop()
            request._sender = None
            request.finish()

    # -- copying --------------------------------------------------------------------------
    def _copy(self) -> None:
        self._scheduled = False
        request = self.request
        while self.remaining > 0 and not self.paused and not self.stopped:
            try:
                data = os.pread(self.fileno, min(self.remaining, CHUNK), self.offset)
            except OSError:
                data = b""
            if not data:
                self._abort()
                return
            self.offset += len(data)
            self.remaining -= len(data)
            request.write(data)
        if self.remaining <= 0 and not self.stopped:
            self.stop()
            request._sender = None
            request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.stopped or self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._copy()
            return
        self._scheduled = True
        loop.call_soon(self._copy)

    def stopProducing(self) -> None:
        self.stop()

    # -- the end --------------------------------------------------------------------------
    def _abort(self) -> None:
        self.stop()
        self.request.channel.transport.abortConnection()

    def stop(self) -> None:
        """Release the file and the descriptor (also when the connection is lost)."""
        if self.stopped:
            return
        self.stopped = True
        if self._sock >= 0:
            if self._waiting and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_writer(self._sock)
            os.close(self._sock)
            self._sock = -1
        self.request.channel.unregisterProducer()
        self.file.close()
