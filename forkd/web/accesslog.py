"""The access log: one line per response in the combined format (nginx's and Apache's).

    127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /a.gif HTTP/1.1" 200 2326 "ref" "agent"

Lines are buffered in memory and written when the buffer passes 64 KiB, once a second (by
the Site's timer) and when the site stops, so logging costs no system call per request.
Off unless the Site has a `logPath` ("-" is standard output).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

log = logging.getLogger("forkd.web")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FLUSH_AT = 64 * 1024


def _quote(value: bytes | None) -> str:
    """A header value as it goes between double quotes: `-` when absent, quotes escaped."""
    if not value:
        return "-"
    text = value.decode("latin-1")
    return text.replace("\\", "\\\\").replace('"', '\\"')


def log_time(seconds: float) -> str:
    t = time.gmtime(seconds)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def combined_line(request: Any, now: float) -> str:
    """The combined-format line for a finished request."""
    ip = request.getClientIP() or "-"
    line = b"%s %s %s" % (request.method, request.uri, request.clientproto)
    return (
        f'{ip} - - [{log_time(now)}] "{_quote(line)}" {request.code} '
        f'{request.sentLength or "-"} "{_quote(request.getHeader(b"referer"))}" '
        f'"{_quote(request.getHeader(b"user-agent"))}"\n'
    )


class AccessLog:
    """A buffered combined-format log written to `path` ("-" for standard output)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._buffer: list[str] = []
        self._size = 0
        self._file: IO[str] | None = None
        self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._file = sys.stdout
        else:
            self._file = open(os.path.abspath(self.path), "a", encoding="utf-8")  # noqa: SIM115

    def log(self, request: Any) -> None:
        line = combined_line(request, time.time())
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
