"""The access log: one line per response, in the Site's `logFormat` (forkd.web.logformat:
gunicorn's atoms, the combined format by default, or JSON lines).

    127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /a.gif HTTP/1.1" 200 2326 "ref" "agent"

Lines are buffered in memory and written when the buffer passes 64 KiB, once a second (by
the Site's timer) and when the site stops, so logging costs no system call per request.
Off unless the Site has a `logPath` ("-" is standard output). The duration is the one the
request measures anyway for the metrics' histogram, so a line costs no clock read.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

from forkd.web.logformat import DEFAULT_FORMAT, compile_format

log = logging.getLogger("forkd.web")

FLUSH_AT = 64 * 1024


class AccessLog:
    """A buffered log written to `path` ("-" for standard output), one line per response
    in `logFormat` (compiled here, once: ValueError if it is bad)."""

    def __init__(self, path: str, logFormat: str = DEFAULT_FORMAT) -> None:
        self.path = path
        self.format = compile_format(logFormat)
        self._buffer: list[str] = []
        self._size = 0
        self._file: IO[str] | None = None
        self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._file = sys.stdout
        else:
            self._file = open(os.path.abspath(self.path), "a", encoding="utf-8")  # noqa: SIM115

    def log(self, request: Any, took: float) -> None:
        """Called by the request as its response finishes, `took` seconds after its
        headers were complete (the duration the metrics count too: no clock read here)."""
        try:
            line = self.format(request, time.time(), took)
        except Exception:  # a line that cannot be made must not break the response
            log.exception("access log %s: no line for %r", self.path, request)
            return
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._buffer or self._file is None:
            return
        data = "".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        try:
            self._file.write(data)
            self._file.flush()
        except (OSError, ValueError) as e:  # a full disk must not take the server down
            log.error("access log %s: %s (lines dropped)", self.path, e)

    def reopen(self) -> None:
        self.flush()
        if self.path != "-" and self._file is not None:
            self._file.close()
        self._open()

    def close(self) -> None:
        self.flush()
        if self.path != "-" and self._file is not None:
            self._file.close()
        self._file = None
