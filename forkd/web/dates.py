"""HTTP dates: the `Date` header (built at most once a second) and RFC 9110 date parsing."""

from __future__ import annotations

import email.utils
import time

_cached_second = -1
_cached_header = b""


def date_header() -> bytes:
    """`Date: <IMF-fixdate>\\r\\n` for now; formatting is skipped within the same second,
    because a busy worker answers thousands of requests a second and they all share it."""
    global _cached_second, _cached_header
    now = int(time.time())
    if now != _cached_second:
        _cached_header = b"Date: " + http_date(now) + b"\r\n"
        _cached_second = now
    return _cached_header


def http_date(seconds: float) -> bytes:
    """`Sun, 06 Nov 1994 08:49:37 GMT` for a POSIX timestamp."""
    return email.utils.formatdate(seconds, usegmt=True).encode("ascii")


def parse_http_date(value: bytes) -> float | None:
    """The POSIX time of an HTTP date (any of the three RFC 9110 forms), None if invalid."""
    try:
        parsed = email.utils.parsedate_tz(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None
