"""Access log line formats (forkd.web.logformat): gunicorn's atoms, escaping, JSON lines.

Each line is made from a real Request that a Site answered over a StringTransport, so
the atoms read what forkd.web really holds after a response.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any

import pytest

from forkd.testing import Clock, StringTransport, connect
from forkd.web import resource, server
from forkd.web.logformat import DEFAULT_FORMAT, compile_format, escape

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


class Keep(resource.Resource):
    """Answers `hello` with a response header, keeping each request for the test."""

    isLeaf = True

    def __init__(self, header: bytes = b"u1") -> None:
        super().__init__()
        self.header = header
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.requests.append(request)
        request.setHeader(b"x-upstream", self.header)
        return b"hello"

    render_POST = render_GET


def answered(data: bytes, keep: Keep | None = None, peer: Any = None) -> Any:
    """The Request a Site made for `data` (one request), once it has been answered."""
    keep = keep or Keep()
    site = server.Site(keep)
    site.clock = Clock()
    transport = StringTransport(peer=peer) if peer else StringTransport()
    connect(site, transport).dataReceived(data)
    [request] = keep.requests
    assert request.finished
    return request


def line(spec: str, request: Any, took: float = 0.0) -> str:
    text = compile_format(spec)(request, NOW, took)
    assert text.endswith("\n") and text.count("\n") == 1  # one line, whatever the values
    return text[:-1]


GET = (
    b"GET /a%20b/c?x=1&y=%22 HTTP/1.1\r\nHost: example.com:8080\r\n"
    b"Referer: http://r.example/\r\nUser-Agent: curl/8.5\r\nX-Request-Id: abc-1\r\n\r\n"
)


# -- each atom -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("atom", "expected"),
    [
        ("h", "127.0.0.1"),
        ("l", "-"),
        ("u", "-"),
        ("r", "GET /a%20b/c?x=1&y=%22 HTTP/1.1"),
        ("m", "GET"),
        ("U", "/a b/c"),  # PATH_INFO, percent-decoded, as gunicorn's
        ("q", "x=1&y=%22"),
        ("H", "HTTP/1.1"),
        ("s", "200"),
        ("B", "5"),
        ("b", "5"),
        ("f", "http://r.example/"),
        ("a", "curl/8.5"),
        ("{x-request-id}i", "abc-1"),
        ("{X-Request-ID}i", "abc-1"),  # header names in any case
        ("{x-missing}i", "-"),
        ("{x-upstream}o", "u1"),
        ("{content-type}o", "-"),  # not set by the resource: the server's default is not
        ("{x-missing}o", "-"),
        ("{REMOTE_ADDR}e", "127.0.0.1"),
        ("{remote_port}e", "54321"),
        ("{REQUEST_METHOD}e", "GET"),
        ("{PATH_INFO}e", "/a b/c"),
        ("{QUERY_STRING}e", "x=1&y=%22"),
        ("{RAW_URI}e", "/a%20b/c?x=1&y=%22"),
        ("{SERVER_NAME}e", "example.com"),
        ("{SERVER_PORT}e", "8007"),
        ("{SERVER_PROTOCOL}e", "HTTP/1.1"),
        ("{HTTP_X_REQUEST_ID}e", "abc-1"),
        ("{http_user_agent}e", "curl/8.5"),
        ("{wsgi.url_scheme}e", "http"),
    ],
)
def test_each_atom_reads_what_gunicorn_s_does(atom: str, expected: str) -> None:
    assert line(f"%({atom})s", answered(GET)) == expected


def test_absent_values_are_dashes_and_no_body_is_a_dash_in_b_only() -> None:
    keep = Keep()
    keep.render_GET = lambda request: keep.requests.append(request) or b""  # type: ignore[method-assign]
    request = answered(b"GET / HTTP/1.0\r\n\r\n", keep)
    assert line("%(f)s %(a)s %(u)s %(b)s %(B)s [%(q)s]", request) == "- - - - 0 []"


def test_remote_address_of_a_unix_socket_is_a_dash() -> None:
    assert line("%(h)s", answered(GET, peer=("UNIX", "/run/app.sock"))) == "-"


def test_the_basic_auth_user() -> None:
    auth = base64.b64encode(b"alice:secret:with:colons")
    request = answered(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Basic %s\r\n\r\n" % auth)
    assert line("%(u)s", request) == "alice"
    bearer = answered(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer abc\r\n\r\n")
    assert line("%(u)s", bearer) == "-"
    broken = answered(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Basic %%%\r\n\r\n")
    assert line("%(u)s", broken) == "-"


def test_durations_in_gunicorn_s_units() -> None:
    request = answered(GET)
    assert line("%(T)s %(M)s %(D)s %(L)s", request, took=2.0345678) == ("2 2034 2034567 2.034567")
    assert line("%(T)s %(M)s %(D)s %(L)s", request, took=0.0000015) == "0 0 1 0.000001"


def test_time_is_gunicorn_s_strftime_in_local_time() -> None:
    expected = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(NOW))
    compiled = compile_format("%(t)s")
    request = answered(GET)
    assert compiled(request, NOW, 0.0) == expected + "\n"
    later = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(NOW + 61))
    assert compiled(request, NOW + 61, 0.0) == later + "\n"  # the cached second moves on


def test_pid_as_gunicorn_writes_it() -> None:
    import os

    assert line("%(p)s", answered(GET)) == f"<{os.getpid()}>"


def test_process_environment_variables(monkeypatch: Any) -> None:
    monkeypatch.setenv("FORKD_TEST_POD", "web-7")
    request = answered(GET)
    assert line("%({FORKD_TEST_POD}e)s", request) == "web-7"
    assert line("%({forkd_test_pod}e)s", request) == "web-7"  # gunicorn's names are any case
    assert line("%({FORKD_TEST_UNSET}e)s", request) == "-"


def test_the_default_is_gunicorn_s_combined_format() -> None:
    assert DEFAULT_FORMAT == '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
    stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(NOW))
    assert line(DEFAULT_FORMAT, answered(GET)) == (
        f'127.0.0.1 - - {stamp} "GET /a%20b/c?x=1&y=%22 HTTP/1.1" 200 5 '
        '"http://r.example/" "curl/8.5"'
    )


def test_percent_conversions_and_literal_percent() -> None:
    request = answered(GET)
    assert line("%(s)d %(B)04d %(M)5d|%(m)-5s|%(r).3s 100%%", request, took=0.012) == (
        "200 0005    12|GET  |GET 100%"
    )


# -- bad formats are refused when compiled -----------------------------------------------
@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("%(x)s", "unknown atom %(x)s"),
        ("%(hh)s", "unknown atom"),
        ("%({}i)s", "unknown atom"),
        ("%({a b}i)s", "unknown atom"),
        ("%({x}z)s", "unknown atom"),
        ("%(h)d", "real number is required"),
        ("%(b)d", "real number is required"),  # "-" when nothing was sent
        ("%s %(h)s", "bad directive"),
        ("100% %(h)s", "bad directive"),
        ("%(h)", "bad directive"),
        ("%(h)c", "bad directive"),
        ("%(h)s\n%(r)s", "control characters"),
        ("%(h)s\t%(r)s", "control characters"),
        ("json:x-id,bad name", "'bad name' is not a header name"),
        ("json:a\nb", "not a header name"),
    ],
)
def test_a_bad_format_is_one_line_value_error(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")) as info:
        compile_format(spec)
    assert "\n" not in str(info.value)


# -- escaping: nothing the client sends can end a field or a line ------------------------
def test_escape_is_nginx_escape_default() -> None:
    assert escape(b"plain text/~!#$") == "plain text/~!#$"
    assert escape(b'a"b\\c') == "a\\x22b\\x5Cc"
    assert escape(b"line\nnext\r\x00\x1b[31m\x7f") == "line\\x0Anext\\x0D\\x00\\x1B[31m\\x7F"
    assert escape("é".encode()) == "\\xC3\\xA9"


def test_a_header_with_quotes_cannot_close_its_field() -> None:
    request = answered(
        b'GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: x" 500 "forged\\\r\nReferer: \xff\r\n\r\n'
    )
    assert line(DEFAULT_FORMAT, request).endswith(' 200 5 "\\xFF" "x\\x22 500 \\x22forged\\x5C"')


def test_a_decoded_newline_in_the_path_or_the_user_cannot_make_a_second_line() -> None:
    request = answered(b"GET /a%0A127.0.0.1%0d%00 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert line("%(U)s", request) == "/a\\x0A127.0.0.1\\x0D\\x00"
    auth = base64.b64encode(b'ev"il\n1.2.3.4 - root:x')
    request = answered(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Basic %s\r\n\r\n" % auth)
    assert line("%(u)s", request) == "ev\\x22il\\x0A1.2.3.4 - root"


def test_control_characters_of_a_response_header_and_the_environment(monkeypatch: Any) -> None:
    request = answered(GET, Keep(header=b"\x1b]0;owned\x07 \x01"))
    assert line("%({x-upstream}o)s", request) == "\\x1B]0;owned\\x07 \\x01"
    monkeypatch.setenv("FORKD_TEST_EVIL", 'a\nb"c')
    assert line("%({FORKD_TEST_EVIL}e)s", request) == "a\\x0Ab\\x22c"


# -- JSON lines --------------------------------------------------------------------------
def record(spec: str, request: Any, took: float = 0.0) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(line(spec, request, took))
    return parsed


def test_json_has_the_fixed_fields() -> None:
    got = record("json", answered(GET), took=0.0123456)
    assert got == {
        "time": "2023-11-14T22:13:20.250+00:00",
        "remote_addr": "127.0.0.1",
        "method": "GET",
        "path": "/a%20b/c",
        "query": "x=1&y=%22",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 5,
        "duration_ms": 12.346,
        "referer": "http://r.example/",
        "user_agent": "curl/8.5",
    }
    assert datetime.fromisoformat(got["time"]).timestamp() == NOW


def test_json_with_requested_headers() -> None:
    got = record("json:X-Request-Id, x-missing", answered(GET))
    assert got["headers"] == {"x-request-id": "abc-1", "x-missing": None}
    bare = record("json", answered(b"GET / HTTP/1.0\r\n\r\n"))
    assert bare["referer"] is None and bare["user_agent"] is None and "headers" not in bare
    assert record("json", answered(GET, peer=("UNIX", "/run/a.sock")))["remote_addr"] is None


def test_json_injection_cannot_forge_a_field_or_a_line() -> None:
    forged = b'x", "status": 500, "admin": true, "y": "'
    request = answered(
        b'GET /p HTTP/1.1\r\nHost: h\r\nUser-Agent: %s\r\nX-Note: \\"}\r\n'
        b"Referer: caf\xc3\xa9 \xe2\x80\xa8 \xff\r\n\r\n" % forged
    )
    text = line("json:x-note", request)
    assert text.isascii() and "\u2028" not in text
    got = json.loads(text)
    assert got["status"] == 200 and "admin" not in got
    assert got["user_agent"] == forged.decode()
    assert got["headers"] == {"x-note": '\\"}'}
    assert got["referer"] == "café \u2028 \\xff"  # UTF-8 decoded, a bad byte as \xff
