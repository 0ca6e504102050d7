"""One forkctl client of the control socket, as the master's loop serves it.

The master must never block on a client, so the socket is non-blocking and reads and writes
go through this connection's buffers: a frame over the size limit gets one error and closes
the connection, a client that stalls mid-message (or never reads its replies) is dropped by
`ControlServer`'s sweep when `expired` says so, and no exception leaves a loop callback.
Complete frames are handed to `ControlServer.dispatch`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from forkd.control.api import MasterAPI
from forkd.control.wire import MAX_MESSAGE, error_response
from forkd.control.writer import BufferedWriter
from forkd.framing import HEADER, FrameDecoder, FrameTooLarge, encode

if TYPE_CHECKING:
    from forkd.control.reply import Reply

log = logging.getLogger("forkd.control")

MAX_OUTPUT_BUFFER = 8 << 20  # a client that does not read its replies is closed beyond this


class ConnectionOwner(Protocol):
    """What a connection needs of the server that accepted it (`ControlServer`)."""

    master: MasterAPI
    pending_replies: set[Reply]
    idle_timeout: float
    session_idle_timeout: float
    message_timeout: float
    write_timeout: float

    def dispatch(self, client: ClientConnection, body: bytes) -> None: ...
    def forget(self, client: ClientConnection) -> None: ...


class ClientConnection:
    """One connected forkctl: its socket, its input and output buffers, its deadlines."""

    def __init__(self, server: ConnectionOwner, sock: socket.socket, uid: int) -> None:
        self.server = server
        self.sock = sock
        self.uid = uid
        self.frames = FrameDecoder(MAX_MESSAGE)
        self.output = BufferedWriter(
            server.master,
            sock,
            MAX_OUTPUT_BUFFER,
            on_error=lambda error: self.close(),
            on_overflow=self._not_reading,
            on_drained=self._maybe_finish_close,
        )
        self.session: dict[str, Any] = {}
        self.pending = 0  # requests whose reply has not been sent yet
        self.closed = False
        self.closing = False  # close once the output buffer is flushed
        self.last_activity = time.monotonic()
        self.partial_since: float | None = None

    # -- reading --------------------------------------------------------------------------
    def on_readable(self) -> None:
        try:
            self._read()
        except Exception:  # never into the master loop
            log.exception("control: client uid %s: internal error; closing it", self.uid)
            self.close()

    def _read(self) -> None:
        for _ in range(16):  # bounded: a firehose client must not starve the loop
            if self.closed or self.closing:
                return
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if not data:
                self.close()
                return
            self.last_activity = time.monotonic()
            self.frames.feed(data)
            self._parse()
            if len(data) < 65536:
                return

    def _parse(self) -> None:
        try:
            for body in self.frames:
                self.server.dispatch(self, body)
                if self.closed or self.closing:
                    return
        except FrameTooLarge as error:  # the stream cannot be delimited any further
            self.send_error(None, str(error))
            self.frames.clear()
            self.closing = True
            self._maybe_finish_close()
            return
        partial = self.frames.partial
        self.partial_since = (self.partial_since or time.monotonic()) if partial else None

    # -- writing --------------------------------------------------------------------------
    def send_error(self, request_id: Any, error: str) -> None:
        self.send(error_response(request_id, error))

    def reply_sent(self, reply: Reply, message: dict[str, Any]) -> None:
        self.server.pending_replies.discard(reply)
        self.pending = max(0, self.pending - 1)
        if self.closed:
            return
        data = encode(message)
        if len(data) - HEADER.size > MAX_MESSAGE:
            data = encode(
                error_response(message.get("id"), f"response over the {MAX_MESSAGE} byte limit")
            )
        self.write(data)

    def send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.write(encode(message))

    def write(self, data: bytes) -> None:
        self.output.write(data)
        self._maybe_finish_close()

    def _not_reading(self) -> None:
        log.warning("control: client uid %s does not read its replies; closing", self.uid)
        self.close()

    def _maybe_finish_close(self) -> None:
        if self.closing and not self.output.pending:
            self.close()

    # -- lifetime -------------------------------------------------------------------------
    def expired(self, now: float) -> str | None:
        """Why this client should be dropped now, or None."""
        limits = self.server
        if self.partial_since is not None and now - self.partial_since > limits.message_timeout:
            return "sent part of a message and then nothing"
        blocked = self.output.blocked_since
        if blocked is not None and now - blocked > limits.write_timeout:
            return "does not read its replies"
        idle_limit = limits.session_idle_timeout if self.session else limits.idle_timeout
        if not self.pending and not self.output.pending and now - self.last_activity > idle_limit:
            return "idle"
        return None

    def detach(self) -> socket.socket:
        """Stop serving this client here without closing its socket (see Reply.detach)."""
        self._unregister()
        self.closed = True
        self.server.forget(self)
        return self.sock

    def _unregister(self) -> None:
        self.output.close()
        with contextlib.suppress(Exception):
            self.server.master.remove_reader(self.sock)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._unregister()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.forget(self)
