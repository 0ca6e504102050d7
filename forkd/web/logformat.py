"""Access log line formats, compiled once into a function of a finished request.

Two kinds, chosen by the Site's `logFormat`:

- A gunicorn `--access-logformat` string (the default is gunicorn's, the combined format):
  `%(atom)s` directives, any %-conversion (`%(s)d`, `%(M)6d`) and `%%`.

      h  remote address               U  URL path, percent-decoded, without the query
      l  "-"                          q  query string (without "?"), "" if none
      u  user name of HTTP Basic auth H  protocol (HTTP/1.1)
      t  [10/Oct/2000:13:55:36 +0200] s  status
      r  request line (GET / HTTP/1.1) B  body bytes sent
      m  method                       b  body bytes sent, "-" for none (CLF)
      f  Referer                      T, M, D  duration: whole seconds, milliseconds,
      a  User-Agent                            microseconds
      p  <pid> (as gunicorn writes it) L  duration in seconds, 6 decimals
      %({name}i)s request header, %({name}o)s response header (the last value; "-")
      %({name}e)s a WSGI environ variable, as gunicorn's atom reads (REMOTE_ADDR,
                  HTTP_X_REQUEST_ID, wsgi.url_scheme, ...), else the process environment

  Text is escaped as nginx's `escape=default` does: `"`, `\\`, control characters and
  bytes above 126 become `\\xHH`, so a header cannot end a quoted field or a line.
  An unknown atom, a directive gunicorn's `%` would reject, or a control character in
  the format itself is refused when the format is compiled (mktap, `forkd serve`).

- `json`, or `json:NAME,NAME` to add request header fields: one JSON object per line,

      {"time":"2000-10-10T13:55:36.123+00:00","remote_addr":"127.0.0.1","method":"GET",
       "path":"/a","query":"x=1","protocol":"HTTP/1.1","status":200,"bytes":2326,
       "duration_ms":12.345,"referer":null,"user_agent":"curl/8.5",
       "headers":{"x-request-id":"abc"}}

  written by json.dumps (ASCII only, every control character escaped), so no value can
  add a field or a line. Text is decoded as UTF-8 (invalid bytes as `\\xHH`); an absent
  header is null; `remote_addr` is null on a UNIX socket; `time` is UTC.

Times: `t` and `time` are when the response finished (as gunicorn's and nginx's); the
duration runs from the request's headers being complete (gunicorn's start) to then.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

__all__ = ["DEFAULT_FORMAT", "LineFormat", "compile_format", "escape"]

DEFAULT_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
JSON = "json"

#: (request, when it finished: epoch seconds, its duration: seconds) -> one line, with "\n"
LineFormat = Callable[[Any, float, float], str]
#: one atom's value for a finished request
Atom = Callable[[Any, float, float], object]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNSAFE = re.compile(rb"[^\x20\x21\x23-\x5b\x5d-\x7e]")  # nginx escape=default keeps these
_DIRECTIVE = re.compile(
    r"%(?:(?P<percent>%)|\((?P<key>[^()]*)\)(?P<spec>[#0 +-]*\d*(?:\.\d+)?[diouxXeEfFgGrsa]))"
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape(value: bytes) -> str:
    """`value` as nginx's escape=default writes it: printable ASCII but `"` and `\\` as is,
    every other byte `\\xHH`."""
    if _UNSAFE.search(value) is None:
        return value.decode("ascii")
    return _UNSAFE.sub(lambda m: b"\\x%02X" % m[0][0], value).decode("ascii")


def _text(value: bytes | None) -> str:
    """A header-like value: escaped, "-" when absent or empty."""
    return escape(value) if value else "-"


# -- the atoms -----------------------------------------------------------------------------
def _remote(request: Any, now: float, took: float) -> object:
    ip = request.getClientIP()
    return escape(ip.encode("latin-1", "replace")) if ip else "-"


def _user(request: Any, now: float, took: float) -> object:
    """The user name of `Authorization: Basic` (gunicorn's `u`), else "-"."""
    auth = request.getHeader(b"authorization")
    if not auth or auth[:6].lower() != b"basic ":
        return "-"
    try:
        decoded = base64.b64decode(auth[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return "-"
    return _text(decoded.partition(b":")[0])


class _LocalTime:
    """`t`: [10/Oct/2000:13:55:36 +0200], local time as gunicorn's (and Apache's, nginx's
    $time_local); made once a second, not once a line."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, request: Any, now: float, took: float) -> object:
        second = int(now)
        if second != self.second:
            t = time.localtime(second)
            offset = t.tm_gmtoff // 60
            hours, minutes = divmod(abs(offset), 60)
            self.text = (
                f"[{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:"
                f"{t.tm_min:02d}:{t.tm_sec:02d} {'-' if offset < 0 else '+'}"
                f"{hours:02d}{minutes:02d}]"
            )
            self.second = second
        return self.text


def _micros(took: float) -> int:
    return int(took * 1_000_000)


def _decimal_seconds(took: float) -> str:
    """`L`: seconds with 6 decimals, from the same microseconds as `D` (gunicorn's)."""
    seconds, micros = divmod(_micros(took), 1_000_000)
    return f"{seconds}.{micros:06d}"


_ATOMS: dict[str, Atom] = {
    "h": _remote,
    "l": lambda r, n, t: "-",
    "u": _user,
    "r": lambda r, n, t: escape(b"%s %s %s" % (r.method, r.uri, r.clientproto)),
    "m": lambda r, n, t: escape(r.method),
    "U": lambda r, n, t: escape(unquote_to_bytes(r.path)),
    "q": lambda r, n, t: escape(r.query),
    "H": lambda r, n, t: escape(r.clientproto),
    "s": lambda r, n, t: r.code,
    "B": lambda r, n, t: r.sentLength,
    "b": lambda r, n, t: r.sentLength or "-",
    "f": lambda r, n, t: _text(r.getHeader(b"referer")),
    "a": lambda r, n, t: _text(r.getHeader(b"user-agent")),
    "T": lambda r, n, t: int(t),
    "M": lambda r, n, t: int(t * 1000),
    "D": lambda r, n, t: _micros(t),
    "L": lambda r, n, t: _decimal_seconds(t),
    "p": lambda r, n, t: f"<{os.getpid()}>",
}
_NUMBERS = frozenset("sBTMD")  # the atoms whose values are ints (`%(s)d` works)
_KNOWN = "h l u t r m U q H s B b f a T M D L p, {header}i, {header}o, {variable}e"


def _request_header(name: bytes) -> Atom:
    return lambda r, n, t: _text(r.getHeader(name))


def _response_header(name: bytes) -> Atom:
    def atom(request: Any, now: float, took: float) -> object:
        values = request.responseHeaders.getRawHeaders(name)
        return _text(values[-1]) if values else "-"

    return atom


def _host_port(request: Any, now: float, took: float) -> object:
    host = request.getHost()
    return str(host[2]) if len(host) > 2 else "-"


def _peer_port(request: Any, now: float, took: float) -> object:
    peer = request.getClientAddress()
    return str(peer[2]) if len(peer) > 2 else "-"


#: the WSGI environ's variables that are not headers (gunicorn's `e` atoms read the environ)
_ENVIRON: dict[str, Atom] = {
    "REQUEST_METHOD": _ATOMS["m"],
    "PATH_INFO": _ATOMS["U"],
    "QUERY_STRING": _ATOMS["q"],
    "SERVER_PROTOCOL": _ATOMS["H"],
    "RAW_URI": lambda r, n, t: escape(r.uri),
    "REMOTE_ADDR": _remote,
    "REMOTE_PORT": _peer_port,
    "SERVER_NAME": lambda r, n, t: _text(r.getRequestHostname()),
    "SERVER_PORT": _host_port,
    "WSGI.URL_SCHEME": lambda r, n, t: "https" if r.isSecure() else "http",
}


def _environ_variable(name: str) -> Atom:
    """`%({name}e)s`: the request's WSGI environ variable `name` (any case, as gunicorn),
    else the worker's environment variable `name` (as typed, else in capitals)."""
    key = name.upper()
    if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        header = key.removeprefix("HTTP_").replace("_", "-").lower()
        return _request_header(header.encode("latin-1"))
    if key in _ENVIRON:
        return _ENVIRON[key]

    def atom(request: Any, now: float, took: float) -> object:
        value = os.environ.get(name, os.environ.get(key))
        return _text(value.encode("utf-8", "surrogateescape")) if value else "-"

    return atom


def _atom(key: str) -> Atom:
    """The function behind `%(key)s`; ValueError for a key gunicorn does not know."""
    if key == "t":
        return _LocalTime()  # each format its own cache of the current second
    if key in _ATOMS:
        return _ATOMS[key]
    if len(key) > 3 and key[0] == "{" and key[-2] == "}" and key[-1] in "ioe":
        name, kind = key[1:-2], key[-1]
        if kind == "e":
            return _environ_variable(name)
        if _TOKEN.fullmatch(name):
            header = name.lower().encode("ascii")
            return _request_header(header) if kind == "i" else _response_header(header)
    raise ValueError(f"unknown atom %({key})s (known: {_KNOWN})")


class AtomFormat:
    """A compiled gunicorn format: a positional %-template and one function per atom."""

    def __init__(self, template: str, atoms: tuple[Atom, ...]) -> None:
        self.template = template + "\n"
        self.atoms = atoms

    def __call__(self, request: Any, now: float, took: float) -> str:
        return self.template % tuple([atom(request, now, took) for atom in self.atoms])


def compile_atoms(spec: str) -> AtomFormat:
    """Compile a gunicorn `--access-logformat` string; ValueError (one line) if it is bad."""
    if _CONTROL.search(spec):
        raise ValueError("a log format cannot contain control characters (newline, tab, ...)")
    template: list[str] = []
    atoms: list[Atom] = []
    samples: list[object] = []
    position = 0
    while (start := spec.find("%", position)) >= 0:
        template.append(spec[position:start])
        match = _DIRECTIVE.match(spec, start)
        if match is None:
            raise ValueError(
                f"bad directive at {spec[start : start + 12]!r}: write %(atom)s, or %% for %"
            )
        if match["percent"]:
            template.append("%%")
        else:
            key = match["key"]
            atoms.append(_atom(key))
            samples.append(0 if key in _NUMBERS else "-")
            template.append("%" + match["spec"])
        position = match.end()
    template.append(spec[position:])
    compiled = AtomFormat("".join(template), tuple(atoms))
    try:  # a conversion the values cannot take (`%(a)d`) fails now, not at each request
        compiled.template % tuple(samples)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{error} (h, r, a and the other text atoms take %s)") from None
    return compiled


# -- JSON lines ----------------------------------------------------------------------------
def _json_text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "backslashreplace") if value is not None else None


class JSONFormat:
    """One JSON object per line with fixed fields and the request headers asked for."""

    def __init__(self, headers: tuple[str, ...] = ()) -> None:
        self.headers = headers
        self._names = tuple(name.encode("ascii") for name in headers)

    def __call__(self, request: Any, now: float, took: float) -> str:
        record: dict[str, object] = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "remote_addr": request.getClientIP(),
            "method": _json_text(request.method),
            "path": _json_text(request.path),
            "query": _json_text(request.query),
            "protocol": _json_text(request.clientproto),
            "status": request.code,
            "bytes": request.sentLength,
            "duration_ms": round(took * 1000, 3),
            "referer": _json_text(request.getHeader(b"referer")),
            "user_agent": _json_text(request.getHeader(b"user-agent")),
        }
        if self.headers:
            record["headers"] = {
                name: _json_text(request.getHeader(raw))
                for name, raw in zip(self.headers, self._names, strict=True)
            }
        return json.dumps(record, separators=(",", ":")) + "\n"


def compile_json(spec: str) -> JSONFormat:
    """`json` or `json:NAME,NAME,...` (request header fields to add)."""
    _, _, listed = spec.partition(":")
    names = tuple(name.strip().lower() for name in listed.split(",") if name.strip())
    for name in names:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
    return JSONFormat(names)


def compile_format(spec: str) -> LineFormat:
    """The line format `spec` names: `json[:HEADERS]` or a gunicorn format string.
    ValueError, with a one-line reason, when it is neither."""
    if spec == JSON or spec.startswith(JSON + ":"):
        return compile_json(spec)
    return compile_atoms(spec)
