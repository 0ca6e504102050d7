"""WebSocket (RFC 6455) on a forkd.web connection, with wsproto doing the framing.

    socket = WebSocket(request)           # in a resource's render, for an Upgrade request
    socket.accept(subprotocol="chat")     # 101 Switching Protocols
    message = await socket.receive()      # str, bytes, or a Closed
    await socket.send("hello")            # waits while the peer reads slower than we write
    socket.close(1000)

The HTTP channel hands the connection over (`HTTPChannel.switchProtocol`) as soon as the
upgrade request is rendered; wsproto (a well-kept sans-I/O implementation: handshake
validation, masking, fragmentation, UTF-8 checks, permessage-deflate) turns bytes into
events and events into bytes, and this class does the I/O and the policy around it:

- Messages are reassembled from their fragments and held to `Site.websocketMaxSize`
  (over it: close 1009, Message Too Big). At most `QUEUE_LIMIT` unread messages are held
  before reading from the client pauses, so a client that floods an application that does
  not read costs bounded memory.
- A ping every `Site.websocketPingInterval` seconds; no pong within
  `Site.websocketPingTimeout`: the peer is gone, close 1011 and drop the connection.
- Draining (a reload, a restart, a stop): the application has `Site.websocketDrain`
  seconds to end the conversation itself; then the server closes it with 1012 (service
  restart: the client should reconnect, a new worker is serving) or 1001 (going away: the
  whole server stops), never a bare TCP close the client would see as 1006.
- After a close frame is sent the peer has `CLOSE_TIMEOUT` seconds to answer it before the
  TCP connection is dropped; as RFC 6455 asks, the server closes the TCP connection first.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from forkd.protocol import stats
from forkd.web.headers import reason_phrase, status_line

__all__ = ["Closed", "WebSocket", "is_websocket_upgrade"]

log = logging.getLogger("forkd.web.websocket")

QUEUE_LIMIT = 16  # unread messages held before the client is held back
CLOSE_TIMEOUT = 5.0  # seconds the peer has to answer our close frame

NORMAL, GOING_AWAY, PROTOCOL_ERROR, TOO_BIG, INTERNAL_ERROR, SERVICE_RESTART = (
    1000,
    1001,
    1002,
    1009,
    1011,
    1012,
)
NO_STATUS, ABNORMAL = 1005, 1006  # never sent: what a peer reports when it saw no code


@dataclass(frozen=True)
class Closed:
    """The conversation is over: the close code (1006 if the TCP connection just ended)."""

    code: int
    reason: str = ""


class ConnectionClosedError(OSError):
    """A send on a WebSocket that is closed (ASGI asks servers for an OSError here)."""


def is_websocket_upgrade(request: Any) -> bool:
    """Whether `request` asks to become a WebSocket (GET with `Upgrade: websocket`)."""
    upgrade = request.getHeader(b"upgrade")
    return request.method == b"GET" and upgrade is not None and upgrade.lower() == b"websocket"


class WebSocket:
    """The server side of one WebSocket, from the upgrade request on."""

    def __init__(self, request: Any) -> None:
        self.request = request
        channel = request.channel
        self.channel = channel
        self.transport = channel.transport
        site = channel.factory
        self.max_size = int(site.websocketMaxSize)
        self.ping_interval = float(site.websocketPingInterval)
        self.ping_timeout = float(site.websocketPingTimeout)
        self.drain_time = float(site.websocketDrain)
        self.deflate = bool(site.websocketPerMessageDeflate)
        self._ws = WSConnection(ConnectionType.SERVER)
        self._messages: asyncio.Queue[str | bytes | Closed] = asyncio.Queue()
        self._parts: list[Any] = []
        self._size = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed: Closed | None = None  # set once, when the conversation ends
        self._reading_paused = False
        self._timers: list[asyncio.TimerHandle] = []
        self._ping_timer: asyncio.TimerHandle | None = None
        self._awaiting_pong: asyncio.TimerHandle | None = None
        self.handshake: Request | None = None
        channel.switchProtocol(self)
        try:
            self._ws.receive_data(_request_bytes(request))
            for event in self._ws.events():
                if isinstance(event, Request):
                    self.handshake = event
        except RemoteProtocolError as error:
            log.info("bad WebSocket handshake from %r: %s", request.getClientIP(), error)

    # -- the handshake ----------------------------------------------------------------------
    @property
    def subprotocols(self) -> list[str]:
        return list(self.handshake.subprotocols) if self.handshake is not None else []

    @property
    def valid(self) -> bool:
        """Whether the upgrade request was a well-formed WebSocket handshake."""
        return self.handshake is not None

    def accept(self, subprotocol: str | None = None, headers: Any = ()) -> None:
        """Answer 101 Switching Protocols: the conversation begins."""
        extensions = [PerMessageDeflate()] if self.deflate else []
        self._write(
            AcceptConnection(
                subprotocol=subprotocol,
                extensions=list(extensions),
                extra_headers=[(bytes(name), bytes(value)) for name, value in headers],
            )
        )
        loop = asyncio.get_running_loop()
        if self.ping_interval > 0:
            self._ping_timer = loop.call_later(self.ping_interval, self._ping)
        if stats.draining:  # accepted by a worker that is already stopping
            self.connectionDraining()

    def reject(self, status: int = 403, headers: Any = (), body: bytes = b"") -> None:
        """Refuse the upgrade with a plain HTTP response, then close the connection."""
        self.rejectStart(status, headers, has_body=bool(body))
        if body:
            self.rejectBody(body, more=False)

    def rejectStart(self, status: int, headers: Any = (), has_body: bool = True) -> None:
        pairs = [(bytes(name), bytes(value)) for name, value in headers]
        if self._ws.state is not ConnectionState.CONNECTING:
            raise RuntimeError("the WebSocket handshake is already answered")
        if self.handshake is None:  # wsproto refuses to answer a handshake it never saw
            body = b"%d %s\n" % (status, reason_phrase(status))
            self.transport.write(
                status_line(status)
                + b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            self._finish(Closed(ABNORMAL))
            return
        if has_body and not any(name.lower() == b"content-length" for name, _ in pairs):
            pairs.append((b"transfer-encoding", b"chunked"))
        self._write(RejectConnection(status_code=status, headers=pairs, has_body=has_body))
        if not has_body:
            self._finish(Closed(ABNORMAL))

    def rejectBody(self, data: bytes, more: bool) -> None:
        if self._closed is not None:
            return
        self._write(RejectData(data=bytes(data), body_finished=not more))
        if not more:
            self._finish(Closed(ABNORMAL))

    # -- the conversation -------------------------------------------------------------------
    async def receive(self) -> str | bytes | Closed:
        """The next whole message, or a Closed once the conversation has ended."""
        if self._closed is not None and self._messages.empty():
            return self._closed
        message = await self._messages.get()
        if self._reading_paused and self._messages.qsize() < QUEUE_LIMIT // 2:
            self._reading_paused = False
            self.channel.resumeBody()
        return message

    async def send(self, data: str | bytes) -> None:
        if self._closed is not None or self._ws.state is not ConnectionState.OPEN:
            raise ConnectionClosedError("the WebSocket is closed")
        self._write(TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data))
        if not self._writable.is_set():  # over the transport's high-water mark
            await self._writable.wait()

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Send a close frame; the TCP connection ends when the peer answers (or after
        CLOSE_TIMEOUT)."""
        if self._ws.state is not ConnectionState.OPEN:
            return
        self._write(CloseConnection(code=code, reason=reason or None))
        self._later(CLOSE_TIMEOUT, self._abort)

    # -- what the channel hands over ----------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event)
        except RemoteProtocolError as error:
            log.info("WebSocket protocol error from %r: %s", self.request.getClientIP(), error)
            self._fail(PROTOCOL_ERROR, str(error))
        except LocalProtocolError:  # the peer spoke before the handshake was answered
            self._fail(PROTOCOL_ERROR, "data before the handshake")

    def connectionLost(self, reason: Any = None) -> None:
        self._finish(Closed(ABNORMAL))

    def connectionDraining(self) -> None:
        """The worker is stopping: the application has `websocketDrain` seconds to finish,
        then the server says 1012 (a restart: reconnect) or 1001 (the server is going)."""
        if self._ws.state is ConnectionState.OPEN:
            self._later(self.drain_time, self._going_away)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- inside -------------------------------------------------------------------------------
    def _handle(self, event: Event) -> None:
        if isinstance(event, (TextMessage, BytesMessage)):
            if self._closed is not None:
                return  # we have closed (a message too big, a protocol error): void now
            chunk = event.data
            self._size += len(chunk.encode()) if isinstance(chunk, str) else len(chunk)
            if self.max_size and self._size > self.max_size:
                self._fail(TOO_BIG, "message too big")
                return
            self._parts.append(chunk)
            if event.message_finished:
                parts, self._parts, self._size = self._parts, [], 0
                whole = parts[0] if len(parts) == 1 else parts[0][:0].join(parts)
                if isinstance(whole, bytearray):
                    whole = bytes(whole)
                self._messages.put_nowait(whole)
                stats.requests += 1  # a message counts as a request (--max-requests too)
                if self._messages.qsize() >= QUEUE_LIMIT and not self._reading_paused:
                    self._reading_paused = True
                    self.channel.pauseBody()
        elif isinstance(event, Ping):
            self._write(event.response())
        elif isinstance(event, Pong):
            if self._awaiting_pong is not None:
                self._awaiting_pong.cancel()
                self._awaiting_pong = None
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                self._write(event.response())
            self._finish(Closed(event.code, event.reason or ""))

    def _write(self, event: Event) -> None:
        try:
            data = self._ws.send(event)
        except LocalProtocolError:  # the state moved on (the peer closed): nothing to send
            return
        self.transport.write(data)

    def _ping(self) -> None:
        self._ping_timer = None
        if self._ws.state is not ConnectionState.OPEN:
            return
        self._write(Ping(payload=b"forkd"))
        loop = asyncio.get_running_loop()
        if self.ping_timeout > 0 and self._awaiting_pong is None:
            self._awaiting_pong = loop.call_later(self.ping_timeout, self._ping_lost)
        self._ping_timer = loop.call_later(self.ping_interval, self._ping)

    def _ping_lost(self) -> None:
        log.info("WebSocket peer %r did not answer a ping: closed", self.request.getClientIP())
        self._fail(INTERNAL_ERROR, "keepalive ping timeout")
        self.transport.loseConnection()  # the close is sent; nobody will answer it

    def _going_away(self) -> None:
        code = GOING_AWAY if stats.shuttingDown else SERVICE_RESTART
        self.close(code, "server shutting down" if code == GOING_AWAY else "server restarting")

    def _fail(self, code: int, reason: str) -> None:
        """Close with `code` and stop listening to the peer (its messages are void now)."""
        self.close(code, reason)
        self._finish(Closed(code, reason))

    def _finish(self, closed: Closed) -> None:
        """The conversation is over: tell the reader, and end the TCP connection once the
        close frames are exchanged (or at once, if they never will be)."""
        if self._closed is None:
            self._closed = closed
            self._messages.put_nowait(closed)
            self._writable.set()  # a sender waiting for the peer must not wait for ever
            for timer in (self._ping_timer, self._awaiting_pong):
                if timer is not None:
                    timer.cancel()
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            return  # our close is out and unanswered: CLOSE_TIMEOUT ends it
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self.channel.connected:
            self.transport.loseConnection()

    def _abort(self) -> None:
        self._finish(self._closed or Closed(ABNORMAL))
        if self.channel.connected:
            self.transport.abortConnection()

    def _later(self, delay: float, callback: Any) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, callback))


def _request_bytes(request: Any) -> bytes:
    """The upgrade request as it came, for wsproto to validate (httptools parsed it first)."""
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method, request.uri)]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in request._raw)
    lines.append(b"\r\n")
    return b"".join(lines)
