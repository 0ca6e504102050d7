"""One timer per Site that enforces every connection's timeouts.

Arming and cancelling an event-loop timer for each request would cost more than the rest of
a small request. Instead each connection records when its current phase began (reading
from `Timeouts.now`, a clock refreshed by the timer) and a single periodic timer asks every
open connection `checkTimeout(now)`. Timeouts therefore fire up to one `resolution` late,
which is what a coarse, cheap clock is for. The timer runs only while connections exist.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

log = logging.getLogger("forkd.web")


class TimerClock(Protocol):
    """The part of an asyncio loop (or forkd.testing.Clock) this needs."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any: ...


class Timeouts:
    """Calls `checkTimeout(now)` on each registered connection every `resolution` seconds."""

    def __init__(self, clock: TimerClock | None, resolution: float, onTick: Any = None) -> None:
        self.clock = clock
        self.resolution = resolution
        self.onTick = onTick
        self.now = clock.time() if clock is not None else time.monotonic()
        self.connections: set[Any] = set()
        self._handle: Any = None

    def add(self, connection: Any) -> None:
        self.connections.add(connection)
        if self._handle is None and self.clock is not None:
            self.now = self.clock.time()
            self._handle = self.clock.call_later(self.resolution, self._tick)

    def discard(self, connection: Any) -> None:
        self.connections.discard(connection)

    def _tick(self) -> None:
        assert self.clock is not None
        self.now = now = self.clock.time()
        for connection in list(self.connections):
            try:
                connection.checkTimeout(now)
            except Exception:  # one broken connection must not stop the others' timeouts
                log.exception("timeout check failed")
        if self.onTick is not None:
            self.onTick()
        if self.connections:
            self._handle = self.clock.call_later(self.resolution, self._tick)
        else:
            self._handle = None

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
