"""HTTP header collections and the response-side bytes an HTTP/1.1 server reuses.

`Headers` follows twisted.web.http_headers.Headers (raw bytes values, case-insensitive names,
`getRawHeaders`/`setRawHeaders`/`addRawHeader`/`hasHeader`/`removeHeader`), minus what a
server never needs. Names are stored lower-case and written canonically (`Content-Type`).
`str` names and values are accepted and encoded as latin-1, the header charset of HTTP/1.x.
"""

from __future__ import annotations

from collections.abc import Iterator
from http import HTTPStatus

_canonical: dict[bytes, bytes] = {b"etag": b"ETag", b"www-authenticate": b"WWW-Authenticate"}


def canonical_name(lower: bytes) -> bytes:
    """`content-type` -> `Content-Type` (cached: the same few names recur on every response)."""
    name = _canonical.get(lower)
    if name is None:
        name = b"-".join(part.capitalize() for part in lower.split(b"-"))
        if len(_canonical) < 1024:
            _canonical[lower] = name
    return name


def to_bytes(value: bytes | str) -> bytes:
    """Header text as bytes: str is encoded latin-1, as HTTP/1.x headers are."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    raise TypeError(f"header names and values must be bytes or str, not {type(value).__name__}")


def _checked(value: bytes | str) -> bytes:
    """Bytes that cannot split the header block (response splitting): no CR, LF or NUL."""
    raw = to_bytes(value)
    if b"\r" in raw or b"\n" in raw or b"\0" in raw:
        raise ValueError(f"header text may not contain CR, LF or NUL: {raw!r}")
    return raw


class Headers:
    """A case-insensitive multi-map of header names to lists of raw values."""

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[bytes | str, list[bytes | str]] | None = None) -> None:
        self._raw: dict[bytes, list[bytes]] = {}
        if raw:
            for name, values in raw.items():
                self.setRawHeaders(name, values)

    @classmethod
    def fromPairs(cls, pairs: list[tuple[bytes, bytes]]) -> Headers:
        """Build from the (name, value) pairs a parser produced, keeping their order."""
        headers = cls()
        raw = headers._raw
        for name, value in pairs:
            key = name.lower()
            values = raw.get(key)
            if values is None:
                raw[key] = [value]
            else:
                values.append(value)
        return headers

    def hasHeader(self, name: bytes | str) -> bool:
        return to_bytes(name).lower() in self._raw

    def getRawHeaders(
        self, name: bytes | str, default: list[bytes] | None = None
    ) -> list[bytes] | None:
        """Every value given for `name`, or `default` when there is none."""
        return self._raw.get(to_bytes(name).lower(), default)

    def setRawHeaders(self, name: bytes | str, values: list[bytes | str]) -> None:
        """Replace every value of `name`."""
        if isinstance(values, (bytes, str)):
            raise TypeError("setRawHeaders takes a list of values")
        self._raw[_checked(name).lower()] = [_checked(v) for v in values]

    def addRawHeader(self, name: bytes | str, value: bytes | str) -> None:
        self._raw.setdefault(_checked(name).lower(), []).append(_checked(value))

    def removeHeader(self, name: bytes | str) -> None:
        self._raw.pop(to_bytes(name).lower(), None)

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, list[bytes]]]:
        """(canonical name, values) for every header, in insertion order."""
        for name, values in self._raw.items():
            yield canonical_name(name), values

    def copy(self) -> Headers:
        new = Headers()
        new._raw = {name: list(values) for name, values in self._raw.items()}
        return new

    def __contains__(self, name: object) -> bool:
        return isinstance(name, (bytes, str)) and self.hasHeader(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._raw == other._raw

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._raw!r})"


def status_line(code: int, message: bytes | None = None) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n`, cached for the standard codes and phrases."""
    if message is None:
        line = _status_lines.get(code)
        if line is not None:
            return line
        message = reason_phrase(code)
    return b"HTTP/1.1 %d %s\r\n" % (code, message)


def reason_phrase(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b"Unknown Status"


_status_lines = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
