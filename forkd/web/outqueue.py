"""How much of a connection's output is waiting on its peer (for Site.sendTimeout).

A connection is waiting on its peer when the transport holds bytes the kernel would not
take yet, or a zero-copy file send is parked on writability (forkd.web.sendfile). While it
waits, `unsent` adds up everything written and not yet acknowledged: the transport's
buffer, the rest of the file being sent and, on Linux, the socket's own send queue
(SIOCOUTQ). The send timeout compares that number from one timeout sweep to the next: a
peer that reads, however slowly, makes it shrink, even while its kernel buffers are still
too full to wake our writer; a peer that stopped reading leaves it unchanged.
"""

from __future__ import annotations

import fcntl
import struct
import sys
import termios
from typing import Any

# SIOCOUTQ shares TIOCOUTQ's number on Linux; elsewhere the kernel queue is left out and a
# peer's progress shows only once our writer is woken.
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None
_INT = struct.Struct("i")


def kernel_queue(transport: Any) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged; 0 when unknown."""
    getter = getattr(transport, "get_extra_info", None)
    if _OUTQ is None or getter is None:
        return 0
    sock = getter("socket")
    if sock is None:
        return 0
    try:
        answer = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
    except (OSError, ValueError):  # closed under us, or not a TCP socket
        return 0
    return int(_INT.unpack(answer)[0])


def unsent(transport: Any, sender: Any = None) -> int:
    """0 when nothing waits on the peer, else the bytes written that it has not taken yet.

    `sender` is the response's FileSender, if any. Fakes without `getWriteBufferSize`
    (forkd.testing.StringTransport) never wait."""
    size = getattr(transport, "getWriteBufferSize", None)
    buffered: int = size() if size is not None else 0
    parked: int = sender.unsent if sender is not None else 0
    if not buffered and not parked:
        return 0
    return buffered + parked + kernel_queue(transport)
