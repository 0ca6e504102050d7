"""The master's event loop: a `selectors` selector, timers and a signal queue.

No asyncio and no threads: one `select()` call per iteration, with a timeout no longer than
the next timer. Signal handlers only append the signal number to a queue (and
`signal.set_wakeup_fd` wakes the select); the owner drains the queue in the loop. The control
server registers its sockets here through the master's `add_reader`/`call_later`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any


def boottime() -> float:
    """The master's clock. CLOCK_BOOTTIME keeps counting through SIGSTOP and system sleep,
    so a suspended master sees the gap (CLOCK_MONOTONIC hides sleep)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


class Timer:
    """A handle from `call_later`; `cancel()` it."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class Loop:
    """File readiness callbacks, timers and queued signals for a single-threaded process.

    `clock` is the one source of time for the timers and for everything the master
    decides: a test passes a fake one instead of patching a module global."""

    MAX_WAIT = 1.0  # the master wakes at least this often (heartbeat checks)

    def __init__(self, clock: Callable[[], float] = boottime) -> None:
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self._watched: dict[int, list[Any]] = {}  # fd -> [reader, writer]
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.signals: deque[int] = deque()
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self.add_reader(self._wakeup_r, self._drain_wakeup)

    # -- files ----------------------------------------------------------------------------
    def add_reader(self, fileobj: Any, callback: Callable[[], Any]) -> None:
        self._set(_fd(fileobj), 0, callback)

    def remove_reader(self, fileobj: Any) -> None:
        self._set(_fd(fileobj), 0, None)

    def add_writer(self, fileobj: Any, callback: Callable[[], Any]) -> None:
        self._set(_fd(fileobj), 1, callback)

    def remove_writer(self, fileobj: Any) -> None:
        self._set(_fd(fileobj), 1, None)

    def forget(self, fd: int) -> None:
        """Stop watching `fd` at all (call before closing it)."""
        if self._watched.pop(fd, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(fd)

    def _set(self, fd: int, index: int, callback: Callable[[], Any] | None) -> None:
        if fd < 0:
            return
        entry = self._watched.get(fd, [None, None])
        entry[index] = callback
        mask = (selectors.EVENT_READ if entry[0] else 0) | (
            selectors.EVENT_WRITE if entry[1] else 0
        )
        if fd in self._watched:
            # unregister + register rather than modify: if the descriptor was closed and its
            # number reused, modify() would keep epoll watching nothing (selectors skips the
            # syscall when the mask is unchanged), and the new file would never be polled.
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(fd)
            if not mask:
                del self._watched[fd]
                return
        elif not mask:
            return
        self.selector.register(fd, mask)
        self._watched[fd] = entry

    # -- timers ---------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        timer = Timer(self.clock() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def next_timeout(self) -> float:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return self.MAX_WAIT
        return min(self.MAX_WAIT, max(0.0, self._timers[0][0] - self.clock()))

    def run_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()

    # -- signals --------------------------------------------------------------------------
    def watch_signals(self, signums: list[int]) -> None:
        """Record these signals in `self.signals` (the handler does nothing else)."""
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self._wakeup_r, 4096):
                pass

    # -- one iteration --------------------------------------------------------------------
    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` and run the callbacks of ready files."""
        try:
            events = self.selector.select(timeout)
        except InterruptedError:
            return
        for key, mask in events:
            entry = self._watched.get(key.fd)
            if entry is not None and mask & selectors.EVENT_READ and entry[0] is not None:
                entry[0]()
            entry = self._watched.get(key.fd)
            if entry is not None and mask & selectors.EVENT_WRITE and entry[1] is not None:
                entry[1]()

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        self.selector.close()
        for fd in (self._wakeup_r, self._wakeup_w):
            with contextlib.suppress(OSError):
                os.close(fd)
