"""`AcceptPause`: what a listening socket in the master's loop does when accept fails.

Out of descriptors (EMFILE, ENFILE) or kernel memory, `accept` fails while the pending
connection keeps the socket readable: a loop that logs and returns is called again at once,
forever, at 100% CPU and megabytes of log a second. So the socket is taken out of the loop
for `PAUSE` seconds (the clients already connected keep being served), and the failure is
logged once per pause with how many there were, not once per wake-up.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from forkd.control.api import EventLoop, TimerHandle

PAUSE = 1.0
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptPause:
    """Calls `stop()` on a resource error and `start()` again after the pause."""

    def __init__(
        self,
        loop: EventLoop,
        log: logging.Logger,
        what: str,
        stop: Callable[[], None],
        start: Callable[[], None],
        pause: float = PAUSE,
    ) -> None:
        self.loop = loop
        self.log = log
        self.what = what
        self.stop = stop
        self.start = start
        self.pause = pause
        self.failures = 0
        self._timer: TimerHandle | None = None

    def batch(self, sock: socket.socket, limit: int) -> Iterator[tuple[socket.socket, Any]]:
        """Accept up to `limit` connections now (bounded: other files get their turn);
        stops when none is pending, or on a failure, which pauses the socket if it was for
        want of resources."""
        for _ in range(limit):
            try:
                yield sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.failed(error)
                return

    @property
    def paused(self) -> bool:
        return self._timer is not None

    def failed(self, error: OSError) -> None:
        """An accept failed; returns with the socket paused if it was for want of resources."""
        if error.errno not in RESOURCE_ERRORS:
            self.log.warning("%s: accept failed: %s", self.what, error)
            return
        self.failures += 1
        if self._timer is None:
            self.log.warning(
                "%s: accept failed: %s; not accepting for %gs", self.what, error, self.pause
            )
            self.stop()
            self._timer = self.loop.call_later(self.pause, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self.failures > 1:
            self.log.warning("%s: %d accepts failed meanwhile", self.what, self.failures)
        self.failures = 0
        self.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
