"""Fakes for testing protocols without sockets: a transport that records, a clock to advance.

from forkd.testing import StringTransport, connect
proto = connect(MyFactory(), StringTransport())
proto.dataReceived(b"hello\\r\\n")
assert proto.transport.value() == b"hello\\r\\n"
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from forkd.protocol import ConnectionDone


class StringTransport:
    """A transport that keeps written bytes in memory.

    `value()` returns everything written so far, `clear()` forgets it. `disconnecting` is
    True after loseConnection, `aborted` after abortConnection. Writing str raises TypeError,
    as a real transport does. `producerState` is 'producing', 'paused' or 'stopped'.
    """

    def __init__(
        self,
        peer: tuple[Any, ...] = ("INET", "127.0.0.1", 54321),
        host: tuple[Any, ...] = ("INET", "127.0.0.1", 8007),
    ) -> None:
        self.io = bytearray()
        self.peer = peer
        self.host = host
        self.disconnecting = False
        self.aborted = False
        self.producer: Any = None
        self.producerState = "producing"

    def write(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self.io += data

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.aborted = True

    def getPeer(self) -> tuple[Any, ...]:
        return self.peer

    def getHost(self) -> tuple[Any, ...]:
        return self.host

    def pauseProducing(self) -> None:
        self.producerState = "paused"

    def resumeProducing(self) -> None:
        self.producerState = "producing"

    def stopProducing(self) -> None:
        self.producerState = "stopped"

    def registerProducer(self, producer: Any, streaming: bool = True) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def value(self) -> bytes:
        return bytes(self.io)

    def clear(self) -> None:
        self.io.clear()


def connect(factory: Any, transport: StringTransport | None = None) -> Any:
    """Build a protocol from `factory` for a fake peer and connect it to `transport`."""
    transport = transport or StringTransport()
    protocol = factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol


def disconnect(protocol: Any, reason: BaseException | None = None) -> None:
    """Tell `protocol` its connection is gone, the way a worker would."""
    protocol.connected = 0
    if getattr(protocol, "_lost_takes_reason", True):
        protocol.connectionLost(reason or ConnectionDone("Connection was closed cleanly."))
    else:
        protocol.connectionLost()


class DelayedCall:
    """A timer handle from Clock: `cancel()` it, check `cancelled`."""

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """A fake clock for timer logic: time moves only when `advance(seconds)` is called.

    It offers both asyncio's spelling (`time`, `call_later`, `call_at`) and Twisted's
    (`seconds`, `callLater`), so code written for the event loop can be tested with it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[tuple[float, int, DelayedCall]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    seconds = time

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> DelayedCall:
        call = DelayedCall(when, callback, args)
        heapq.heappush(self._queue, (when, next(self._order), call))
        return call

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> DelayedCall:
        return self.call_at(self.now + delay, callback, *args)

    callLater = call_later

    def advance(self, seconds: float) -> None:
        """Move time forward and run every timer that falls due, in order."""
        self.now += seconds
        while self._queue and self._queue[0][0] <= self.now:
            _, _, call = heapq.heappop(self._queue)
            if not call.cancelled:
                call.callback(*call.args)

    @property
    def pending(self) -> list[DelayedCall]:
        return [call for _, _, call in sorted(self._queue) if not call.cancelled]
