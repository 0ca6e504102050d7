"""`WriteWatch`: how a connection served in the master's loop gets its pending output sent.

Sockets in the master are non-blocking; what `send` could not take waits in the
connection's buffer until the socket is writable. A loop with writer callbacks
(`add_writer`/`remove_writer`, as `forkd.loop.Loop` has) is asked to call `flush` then; a
loop without them (the fakes some tests use) gets a retry timer every `RETRY_INTERVAL`
instead. Shared by the control socket's clients and the master-served ports (telnet).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

RETRY_INTERVAL = 0.02


class WriteWatch:
    """Calls `flush` while `pending()` says output waits; `start` and `stop` are idempotent."""

    def __init__(
        self,
        master: Any,
        sock: socket.socket,
        flush: Callable[[], None],
        pending: Callable[[], bool],
    ) -> None:
        self.master = master
        self.sock = sock
        self.flush = flush
        self.pending = pending
        self.active = False
        self._retry: Any = None

    def start(self) -> None:
        if self.active:
            return
        self.active = True
        add_writer = getattr(self.master, "add_writer", None)
        if add_writer is not None:
            add_writer(self.sock, self.flush)
        else:
            self._retry = self.master.call_later(RETRY_INTERVAL, self._retry_flush)

    def _retry_flush(self) -> None:
        self._retry = None
        self.active = False
        self.flush()
        if self.pending():
            self.start()

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
            return
        remove_writer = getattr(self.master, "remove_writer", None)
        if remove_writer is not None:
            with contextlib.suppress(Exception):
                remove_writer(self.sock)
