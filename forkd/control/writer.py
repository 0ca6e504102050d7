"""`BufferedWriter`: non-blocking output for a socket served in the master's loop.

The master must never block on a peer, so every socket there is non-blocking: `write`
sends what the kernel takes now and keeps the rest, and the loop calls back when the socket
is writable to send more. Beyond `limit` buffered bytes the peer is not reading, and the
owner hears of it (`on_overflow`) rather than the master's memory growing without bound.
The control socket's clients and the master-served ports (telnet) both write through it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from forkd.control.api import EventLoop

CHUNK = 256 * 1024


class BufferedWriter:
    """Buffered writes to one non-blocking socket, flushed by the loop.

    `on_error(error)`: a send failed (the peer is gone); `on_overflow()`: over `limit`;
    `on_drained()`: everything buffered has been sent. None of them is called after `close`.
    """

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        limit: int,
        on_error: Callable[[OSError], None],
        on_overflow: Callable[[], None],
        on_drained: Callable[[], None] = lambda: None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.limit = limit
        self.on_error = on_error
        self.on_overflow = on_overflow
        self.on_drained = on_drained
        self.buffer = bytearray()
        self.blocked_since: float | None = None  # when output first had to wait
        self.closed = False
        self._watching = False

    @property
    def pending(self) -> bool:
        return bool(self.buffer)

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        if not self.buffer:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self.on_error(error)
                return
            data = data[sent:]
        if not data:
            return
        self.buffer += data
        if len(self.buffer) > self.limit:
            self.on_overflow()
            return
        if self.blocked_since is None:
            self.blocked_since = time.monotonic()
        if not self._watching:
            self._watching = True
            self.loop.add_writer(self.sock, self.flush)

    def flush(self) -> None:
        """Send what the socket takes (the loop calls it when the socket is writable)."""
        while self.buffer and not self.closed:
            try:
                sent = self.sock.send(self.buffer[:CHUNK])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.on_error(error)
                return
            del self.buffer[:sent]
        if self.closed:
            return
        self.blocked_since = None
        self._unwatch()
        self.on_drained()

    def discard(self) -> None:
        """Drop what is buffered (an abort)."""
        self.buffer.clear()

    def close(self) -> None:
        """Stop writing (the socket itself is the owner's to close)."""
        self.closed = True
        self._unwatch()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self.loop.remove_writer(self.sock)
