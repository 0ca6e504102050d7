"""The master <-> worker channel: length-prefixed JSON messages over a socketpair, with
file descriptors passed alongside (SCM_RIGHTS).

Wire format: `forkd.framing`'s frames, each a JSON object with an ``"op"`` key. A
message that carries descriptors says how many in ``"fds"``; the descriptors travel as
ancillary data on the first byte of that message, so the receiver queues every descriptor it
gets and hands a message the ``fds`` it announced, in order.

Both ends use the socket non-blocking: `send` queues and writes what the kernel takes now,
`flush` writes more when the socket is writable again (the owner watches `wants_write`), and
`receive` returns every complete message read so far. A slow peer therefore never blocks the
master's loop.
"""

from __future__ import annotations

import array
import contextlib
import enum
import os
import socket
from collections import deque
from typing import Any

from forkd.framing import FrameDecoder, FrameError, decode, encode

MAX_MESSAGE = 16 * 1024 * 1024  # pickled factories ride in messages; refuse absurd sizes
MAX_FDS_PER_READ = 16


class Op(enum.StrEnum):
    """Every message on the channel (its ``"op"``), by the side that sends it."""

    # worker -> master
    READY = "ready"  # every port served: the worker counts as up
    HEARTBEAT = "heartbeat"  # {connections, accepted, requests}, every heartbeat interval
    BOOT_FAILED = "boot_failed"  # {error}: sent before exiting EXIT_BOOT_FAILED
    PORT_ADDED = "port_added"  # {key}
    PORT_FAILED = "port_failed"  # {key, error}
    PORT_REMOVED = "port_removed"  # {key}
    # master -> worker
    ADD_PORT = "add_port"  # {key, port: the pickled port, base64} + its descriptor
    REMOVE_PORT = "remove_port"  # {key}
    SHUTDOWN = "shutdown"  # the whole server is stopping, not just this worker


class ChannelError(Exception):
    """The peer sent something that is not a channel message (the channel is then closed)."""


class ChannelClosed(Exception):
    """The peer has gone (EOF or a reset)."""


class Channel:
    """One end of a socketpair speaking the message format above."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        # Kept after close: the master's selector must forget this number even when the
        # socket was closed first (an fd reused by the next worker's channel would
        # otherwise inherit a stale registration and never be polled).
        self.fd = sock.fileno()
        self._frames = FrameDecoder(MAX_MESSAGE)
        self._fds: deque[int] = deque()
        self._outbox: deque[tuple[bytes, list[int]]] = deque()
        self.closed = False

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """A connected (master end, worker end) pair."""
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(left), cls(right)

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        """The channel on an inherited descriptor (a re-executed master's workers)."""
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending ------------------------------------------------------------------------
    def send(self, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        """Queue `message` (and `fds`, duplicated so the caller may close its own) and write
        as much as the socket takes now."""
        if self.closed:
            raise ChannelClosed("channel is closed")
        if fds:
            message = {**message, "fds": len(fds)}
        self._outbox.append((encode(message), [os.dup(fd) for fd in fds]))
        self.flush()

    @property
    def wants_write(self) -> bool:
        return bool(self._outbox)

    def flush(self) -> bool:
        """Write queued messages until the socket would block; True when all are sent."""
        while self._outbox:
            data, fds = self._outbox[0]
            try:
                if fds:
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    sent = self.sock.sendmsg([data], rights)
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as error:
                self.close()
                raise ChannelClosed(str(error)) from error
            for fd in fds:  # the kernel holds its own references now
                os.close(fd)
            if sent < len(data):
                self._outbox[0] = (data[sent:], [])
                return False
            self._outbox.popleft()
        return True

    def send_blocking(self, message: dict[str, Any], timeout: float = 5.0) -> None:
        """Send and wait until written (workers use it for their last words)."""
        self.send(message)
        self.flush_blocking(timeout)

    def flush_blocking(self, timeout: float) -> None:
        """Write everything queued, waiting up to `timeout` per write (before an exec, or
        a worker's exit, forgets the queue)."""
        self.sock.settimeout(timeout)
        try:
            while self._outbox:
                data, fds = self._outbox.popleft()
                if fds:
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    sent = self.sock.sendmsg([data], rights)
                    for fd in fds:
                        os.close(fd)
                    data = data[sent:]
                self.sock.sendall(data)
        finally:
            with contextlib.suppress(OSError):
                self.sock.setblocking(False)

    # -- receiving ----------------------------------------------------------------------
    def receive(self) -> list[tuple[dict[str, Any], list[int]]]:
        """Read what is available; return complete (message, fds) pairs.

        Raises ChannelClosed at EOF (after returning nothing), ChannelError on garbage."""
        eof = False
        for _ in range(64):  # bounded: let other fds have their turn
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    65536, socket.CMSG_SPACE(MAX_FDS_PER_READ * 4)
                )
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                eof = True
                if not self._frames.partial:
                    self.close()
                    raise ChannelClosed(str(error)) from error
                break
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                eof = True
                break
            self._frames.feed(data)
        messages = self._parse()
        if eof and not messages:
            self.close()
            raise ChannelClosed("peer closed the channel")
        return messages

    def _parse(self) -> list[tuple[dict[str, Any], list[int]]]:
        messages = []
        try:
            decoded = [decode(body) for body in self._frames]
        except FrameError as error:
            raise ChannelError(str(error)) from error
        for message in decoded:
            if not isinstance(message.get("op"), str):
                raise ChannelError("a message is a JSON object with an 'op'")
            wanted = message.get("fds", 0)
            count = wanted if isinstance(wanted, int) and 0 < wanted <= len(self._fds) else 0
            messages.append((message, [self._fds.popleft() for _ in range(count)]))
        return messages

    def close(self) -> None:
        """Close the socket and any descriptors received or queued but not handed out."""
        if self.closed:
            return
        self.closed = True
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())
        for _, fds in self._outbox:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._outbox.clear()
        self.sock.close()
