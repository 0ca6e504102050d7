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
from typing import TYPE_CHECKING, Any

from forkd.control_wire import HEADER, MAX_MESSAGE, encode, error_response
from forkd.write_watch import WriteWatch

if TYPE_CHECKING:
    from forkd.control import ControlServer

log = logging.getLogger("forkd.control")

MAX_OUTPUT_BUFFER = 8 << 20  # a client that does not read its replies is closed beyond this


class ClientConnection:
    """One connected forkctl: its socket, its input and output buffers, its deadlines."""

    def __init__(self, server: ControlServer, sock: socket.socket, uid: int) -> None:
        self.server = server
        self.sock = sock
        self.uid = uid
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.session: dict[str, Any] = {}
        self.pending = 0  # requests whose reply has not been sent yet
        self.closed = False
        self.closing = False  # close once the output buffer is flushed
        self.write_watch = WriteWatch(
            server.master, sock, self.on_writable, lambda: bool(self.outbuf) and not self.closed
        )
        self.last_activity = time.monotonic()
        self.partial_since: float | None = None
        self.write_blocked_since: float | None = None

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
            self.inbuf += data
            self._parse()
            if len(data) < 65536:
                return

    def _parse(self) -> None:
        while not self.closed and not self.closing:
            if len(self.inbuf) < HEADER.size:
                break
            (length,) = HEADER.unpack_from(self.inbuf)
            if length > MAX_MESSAGE:
                self.send_error(None, f"message of {length} bytes is over the {MAX_MESSAGE} limit")
                self.inbuf.clear()
                self.closing = True
                self._maybe_finish_close()
                return
            if len(self.inbuf) < HEADER.size + length:
                break
            body = bytes(self.inbuf[HEADER.size : HEADER.size + length])
            del self.inbuf[: HEADER.size + length]
            self.server.dispatch(self, body)
        self.partial_since = (self.partial_since or time.monotonic()) if self.inbuf else None

    # -- writing --------------------------------------------------------------------------
    def send_error(self, request_id: Any, error: str) -> None:
        self.send(error_response(request_id, error))

    def reply_sent(self, message: dict[str, Any]) -> None:
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
        if not self.outbuf:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            data = data[sent:]
        if data:
            self.outbuf += data
            if len(self.outbuf) > MAX_OUTPUT_BUFFER:
                log.warning("control: client uid %s does not read its replies; closing", self.uid)
                self.close()
                return
            if self.write_blocked_since is None:
                self.write_blocked_since = time.monotonic()
            self._want_write()
        self._maybe_finish_close()

    def _want_write(self) -> None:
        if not self.closed:
            self.write_watch.start()

    def on_writable(self) -> None:
        try:
            self._flush()
        except Exception:
            log.exception("control: client uid %s: internal error; closing it", self.uid)
            self.close()

    def _flush(self) -> None:
        if self.closed:
            return
        while self.outbuf:
            try:
                sent = self.sock.send(self.outbuf[:262144])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            del self.outbuf[:sent]
        self.write_blocked_since = None
        self.write_watch.stop()
        self._maybe_finish_close()

    def _maybe_finish_close(self) -> None:
        if self.closing and not self.outbuf:
            self.close()

    # -- lifetime -------------------------------------------------------------------------
    def expired(self, now: float) -> str | None:
        """Why this client should be dropped now, or None."""
        limits = self.server
        if self.partial_since is not None and now - self.partial_since > limits.message_timeout:
            return "sent part of a message and then nothing"
        if self.write_blocked_since is not None and (
            now - self.write_blocked_since > limits.write_timeout
        ):
            return "does not read its replies"
        idle_limit = limits.session_idle_timeout if self.session else limits.idle_timeout
        if not self.pending and not self.outbuf and now - self.last_activity > idle_limit:
            return "idle"
        return None

    def detach(self) -> socket.socket:
        """Stop serving this client here without closing its socket (see Reply.detach)."""
        self._unregister()
        self.closed = True
        self.server.forget(self)
        return self.sock

    def _unregister(self) -> None:
        self.write_watch.stop()
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
