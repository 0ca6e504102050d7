"""`Spool`: a first-in, first-out byte buffer kept in memory up to a size, then on disk.

What a response has produced and its client has not taken yet waits here (see
forkd.web.handoff): a slow reader then costs the worker `memory` bytes of RAM at most,
and the rest a temporary file, which the kernel keeps in its page cache while it can
(as request bodies are spooled: Request.content). Bytes come out in the order they
went in: once anything is on disk, later bytes go to disk behind it, until it drains.
"""

from __future__ import annotations

import tempfile
from collections import deque
from typing import Any

__all__ = ["Spool"]


class Spool:
    """`append(data)` at the end, `take(size)` from the front, `len()` bytes held."""

    def __init__(self, memory: int) -> None:
        self.memory = memory
        self._chunks: deque[bytes] = deque()
        self._inMemory = 0
        self._file: Any = None
        self._readAt = 0
        self._writeAt = 0

    def __len__(self) -> int:
        return self._inMemory + self._writeAt - self._readAt

    @property
    def onDisk(self) -> int:
        """Bytes held in the temporary file."""
        return self._writeAt - self._readAt

    def append(self, data: bytes) -> None:
        if not data:
            return
        if self._file is None and self._inMemory + len(data) <= self.memory:
            self._chunks.append(data)
            self._inMemory += len(data)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="forkd-spool-")  # noqa: SIM115
        self._file.seek(self._writeAt)
        self._file.write(data)
        self._writeAt += len(data)

    def take(self, size: int) -> bytes:
        """Up to `size` bytes from the front (fewer only when fewer are held)."""
        chunks = self._chunks
        if chunks:
            data = chunks.popleft()
            if len(data) > size:
                chunks.appendleft(data[size:])
                data = data[:size]
            self._inMemory -= len(data)
            return data
        if self._file is None:
            return b""
        self._file.seek(self._readAt)
        data = bytes(self._file.read(min(size, self._writeAt - self._readAt)))
        self._readAt += len(data)
        if self._readAt >= self._writeAt:  # drained: memory first again
            self.close()
        return data

    def close(self) -> None:
        """Forget what is held and remove the file."""
        self._chunks.clear()
        self._inMemory = 0
        if self._file is not None:
            self._file.close()
            self._file = None
        self._readAt = self._writeAt = 0
