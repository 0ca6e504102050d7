"""A hand-written minimal HTTP responder on a raw uvloop protocol: the ceiling for Python.

Run as `python uvloop_hello.py PORT WORKERS`. It does no real HTTP parsing: every request
head (ended by a blank line) gets the same canned response, which is correct for the
bodiless GETs the benchmark sends. That is the point: it is the cost of the event loop and
the socket calls alone, a bound no Python HTTP server can beat on the same loop. Workers
are forked after the listening socket is bound and share it, as a pre-fork server does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Any

import uvloop

BODY = b"Hello, world!\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
END_OF_HEAD = b"\r\n\r\n"


def split_heads(buffer: bytes) -> tuple[int, bytes]:
    """How many complete request heads `buffer` holds, and the incomplete rest."""
    count = buffer.count(END_OF_HEAD)
    if count == 0:
        return 0, buffer
    return count, buffer[buffer.rindex(END_OF_HEAD) + len(END_OF_HEAD) :]


class HelloProtocol(asyncio.Protocol):
    """Answers each complete request head with RESPONSE (pipelined heads in one write)."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.pending = b""

    def connection_made(self, transport: Any) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass: duck typing only.
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        count, self.pending = split_heads(self.pending + data if self.pending else data)
        if count and self.transport is not None:
            self.transport.write(RESPONSE * count)


def serve(sock: socket.socket) -> None:
    """Run one worker's event loop on the shared listening socket until SIGTERM."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_until_complete(loop.create_server(HelloProtocol, sock=sock, backlog=1024))
    loop.run_forever()


def main() -> None:
    port, workers = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    if workers == 1:
        serve(sock)
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                serve(sock)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, frame: object) -> None:
        for pid in children:
            os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
