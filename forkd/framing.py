"""Length-prefixed JSON frames: the one message format of forkd's sockets.

A frame is a 4-byte big-endian length, then that many bytes of a compact UTF-8 JSON
object. The master <-> worker channel (`forkd.supervisor.channel`), the control socket's
server (`forkd.control.connection`) and its client (`forkd.control.client`) all speak it,
with their own size limits, so the format and its parser live here once.

    data = encode({"op": "ready"})
    frames = FrameDecoder(limit=1 << 20)
    frames.feed(data)
    for body in frames:            # raises FrameTooLarge for a length over the limit
        message = decode(body)     # raises FrameError for a body that is not a JSON object

Why a decoder and not a reader: every user reads non-blocking sockets in pieces of any
size, so frames are cut from a buffer that keeps what is not yet complete.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

HEADER = struct.Struct("!I")


class FrameError(ValueError):
    """A frame's body is not a UTF-8 JSON object."""


class FrameTooLarge(FrameError):
    """A frame announces more bytes than the limit: the stream cannot be trusted further."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame: the length, then compact JSON (values JSON lacks become strings)."""
    body = json.dumps(message, separators=(",", ":"), default=str).encode()
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object in a frame's body."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FrameError(f"not UTF-8 JSON: {error}") from None
    if not isinstance(message, dict):
        raise FrameError("a message is a JSON object")
    return message


class FrameDecoder:
    """Cuts complete frame bodies out of bytes fed in pieces of any size."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    @property
    def partial(self) -> bool:
        """Whether part of a frame is waiting for the rest."""
        return bool(self.buffer)

    def clear(self) -> None:
        self.buffer.clear()

    def __iter__(self) -> Iterator[bytes]:
        """Each complete body in order; stops at an incomplete one. A length over the limit
        raises FrameTooLarge (the message names it) and leaves the buffer as it was."""
        buffer = self.buffer
        while len(buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer)
            if length > self.limit:
                raise FrameTooLarge(f"message of {length} bytes is over the {self.limit} limit")
            end = HEADER.size + length
            if len(buffer) < end:
                return
            body = bytes(buffer[HEADER.size : end])
            del buffer[:end]
            yield body
