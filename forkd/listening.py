"""`Listener`: a port's accepting in a worker, which the worker's load can hold back.

Every worker listens on the same socket, inherited from the master: the kernel's listen
queue is shared, and a connection goes to whichever worker accepts it first. A worker that
has no capacity left (every thread of a WSGI pool busy and its waiting line full) should
leave new connections in that queue, where another worker will take them, or where they
wait at no cost to anyone (the pre-fork advantage): so its port stops accepting. Three
modes, set by whoever measures the load (forkd.web.threadpool; several may share a port,
and the strictest wins):

- FREE: the event loop's own server accepts, as fast as connections come (the fast path:
  C code, no Python per connection);
- HOLD: nothing is accepted; the worker's descriptor is out of the loop, so the kernel
  does not even wake this worker for a new connection;
- METER: coming back from HOLD, connections are accepted one at a time: the next only
  once the last has brought its request (the holder calls `settle()` when the request
  is counted) or after METER_GRACE (a client that connects and sends nothing must not
  stop accepting). The loop's own server would instead take every connection queued
  meanwhile in one go (libuv and asyncio accept until the queue is empty): all of them
  would land in this worker, over its capacity, while other workers may have room. The
  holder returns the port to FREE when it is idle again.

The loop's server runs on a dup of the socket, so stopping it (HOLD) closes only the dup:
the listening socket, and the queue, stay open for the other workers. `close()` (the
worker stops serving the port) closes the socket too.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("forkd.listening")

__all__ = ["AcceptMode", "Listener", "listener_of"]

# Accepting without the resources for it fails at once and again on every wake-up: the
# metered reader is taken out of the loop for this long instead.
RESOURCE_PAUSE = 1.0
# METER: seconds after which the next connection is accepted even if the last one has
# not brought a request yet
METER_GRACE = 0.05
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

StartServer = Callable[[socket.socket], Awaitable[asyncio.AbstractServer]]


class AcceptMode(enum.IntEnum):
    """How a port accepts; a greater value is stricter."""

    FREE = 0
    METER = 1
    HOLD = 2


class Listener:
    """Serves `sock` on `loop` with `protocol_factory`, in the mode its holders ask for.

    `start_server(sock)` is the loop's `create_server` (or `create_unix_server`) for a
    socket: it is called with a dup of `sock` each time the port goes back to FREE.
    `secure` are the TLS arguments (forkd.tls.serving) for the connections METER accepts
    itself."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        start_server: StartServer,
        secure: dict[str, Any] | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.start_server = start_server
        self.secure = secure or {}  # TLS arguments, for a connection accepted by METER
        self.mode = AcceptMode.HOLD  # until start()
        self.closed = False
        self._modes: dict[object, AcceptMode] = {}
        self._server: asyncio.AbstractServer | None = None
        self._starting: asyncio.Task[None] | None = None
        self._reading = False  # the metered reader is in the loop
        self._unsettled: asyncio.TimerHandle | None = None  # METER: the last one's grace
        self._resting: asyncio.TimerHandle | None = None  # after a resource error

    async def start(self) -> None:
        """Begin accepting (FREE); raises as create_server does if the loop cannot."""
        self.mode = AcceptMode.FREE
        self._server = await self.start_server(self.sock.dup())

    # -- what the load asks -----------------------------------------------------------------
    def setMode(self, holder: object, mode: AcceptMode) -> None:
        """`holder` (a thread pool, say) wants this port in `mode`; FREE withdraws it."""
        if mode is AcceptMode.FREE:
            self._modes.pop(holder, None)
        else:
            self._modes[holder] = mode
        self._apply()

    def wanted(self) -> AcceptMode:
        return max(self._modes.values(), default=AcceptMode.FREE)

    def _apply(self) -> None:
        if self.closed:
            return
        mode = self.wanted()
        if mode is self.mode:
            return
        self.mode = mode
        self._settled()
        if mode is AcceptMode.FREE:
            self._stopReading()
            if self._server is None and self._starting is None:
                self._starting = self.loop.create_task(self._startFree())
            return
        self._stopServer()
        if mode is AcceptMode.METER:
            self._startReading()
        else:
            self._stopReading()

    async def _startFree(self) -> None:
        try:
            server = await self.start_server(self.sock.dup())
        except OSError as error:  # the socket is fine (it was served): meter instead
            log.warning("cannot serve %r again: %s; accepting one at a time", self.sock, error)
            self._starting = None
            self.mode = AcceptMode.METER
            self._startReading()
            return
        self._starting = None
        if self.closed or self.mode is not AcceptMode.FREE:
            server.close()  # held again while it started
            if not self.closed and self.mode is AcceptMode.METER:
                self._startReading()
            return
        self._server = server

    def _stopServer(self) -> None:
        if self._server is not None:
            self._server.close()  # closes its dup only: the queue stays for the others
            self._server = None

    # -- METER: one connection at a time ------------------------------------------------------
    def settle(self) -> None:
        """The holder has counted the request of the connection accepted last: METER may
        accept the next one."""
        if self._unsettled is not None:
            self._settled()
            if self.mode is AcceptMode.METER:
                self._startReading()

    def _settled(self) -> None:
        if self._unsettled is not None:
            self._unsettled.cancel()
            self._unsettled = None

    def _startReading(self) -> None:
        if (
            not self._reading
            and self._resting is None
            and self._starting is None
            and self._unsettled is None
            and not self.closed
        ):
            self.loop.add_reader(self.sock.fileno(), self._acceptOne)
            self._reading = True

    def _stopReading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _acceptOne(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the peer gave up first
        except OSError as error:
            if error.errno not in _RESOURCE_ERRORS:
                log.warning("accept failed: %s", error)
                return
            log.warning("accept failed: %s; not accepting for %gs", error, RESOURCE_PAUSE)
            self._stopReading()
            self._resting = self.loop.call_later(RESOURCE_PAUSE, self._rested)
            return
        conn.setblocking(False)
        self.loop.create_task(self._connect(conn))
        self._stopReading()  # until it has brought its request, or its grace is over
        self._unsettled = self.loop.call_later(METER_GRACE, self.settle)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn, **self.secure)
        except OSError as error:  # the peer reset it before the transport was made
            log.debug("accepted connection lost at once: %s", error)
            conn.close()

    def _rested(self) -> None:
        self._resting = None
        if not self.closed and self.mode is AcceptMode.METER:
            self._startReading()

    # -- the end ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting for good and close the socket (the worker no longer serves it)."""
        if self.closed:
            return
        self.closed = True
        self._stopServer()
        self._stopReading()
        self._settled()
        if self._resting is not None:
            self._resting.cancel()
            self._resting = None
        self.sock.close()

    async def wait_closed(self) -> None:
        """As asyncio.Server's: nothing to wait for once closed."""

    def __repr__(self) -> str:
        return f"<Listener {self.mode.name} on {self.sock!r}>"


def listener_of(port: Any) -> Listener | None:
    """The Listener serving `port` in this worker, if any: None for a port served some
    other way (a seed-style port, a loop's own create_server in tests)."""
    listener = getattr(port, "listener", None)
    return listener if isinstance(listener, Listener) else None
