"""Closing a TLS connection without waiting on the peer for what it need not send.

The event loop's `transport.close()` on a TLS transport flushes, sends close_notify and
then waits for the peer's own close_notify, up to the port's shutdown timeout
(forkd.tls.SHUTDOWN_TIMEOUT): a client that never reads (an idle keep-alive connection in
a `requests` pool) would hold the connection, and a draining worker, for all of it. TLS
lets the side that closes first go without that answer (RFC 8446 6.1; nginx does), so
`close` aborts the connection once everything sent has been delivered. forkd.protocol's
Transport makes it the `loseConnection` of TLS transports.

Kept apart from forkd.tls (the context factory and its options), which every forkd
protocol would otherwise import.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import Callable
from typing import Any

#: seconds between two looks at a closing connection's unsent bytes
CLOSE_POLL = 0.1


def close(transport: Any, lost: Callable[[], bool]) -> None:
    """Close `transport` (flush, close_notify), then abort it once everything sent has
    been delivered, and still is a poll later. A slow client keeps what it is owed: until
    then only the loop's shutdown timeout cuts it. `lost()` says the connection is gone."""
    if transport.is_closing():  # closed already, by us or by the peer's close_notify
        return
    transport.close()
    loop = asyncio.get_running_loop()

    def poll(quiet: bool) -> None:
        if lost():
            return
        delivered = _delivered(transport)
        if delivered and quiet:
            transport.abort()
        else:
            loop.call_later(CLOSE_POLL, poll, delivered)

    loop.call_later(CLOSE_POLL, poll, False)


def _delivered(transport: Any) -> bool:
    """Whether every byte written (close_notify included) has left the loop's buffers
    and been acknowledged by the peer's kernel (Linux SIOCOUTQ: the unacknowledged bytes)."""
    if transport.get_write_buffer_size():
        return False
    sock = transport.get_extra_info("socket")
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except (AttributeError, OSError, ValueError):  # gone, or not Linux: the loop decides
        return False
    return bool(struct.unpack("i", raw)[0] == 0)
