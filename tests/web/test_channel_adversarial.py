"""forkd.web against hostile and unusual clients, over real loopback sockets.

Each test sends raw bytes and checks the answer against what RFC 9110/9112 and nginx do:
framing (Host, Transfer-Encoding, Content-Length on both sides), request targets, Expect,
byte-at-a-time delivery, pipelines with an error in the middle, disconnects, and static
files (Range, conditional requests, redirects, listings with hostile names).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from forkd.web import server, static, vhost
from forkd.web.resource import NOT_DONE_YET, Resource
from tests.webserving import ResponseReader, ServedSite, connect, request, serving, wait_for


class Echo(Resource):
    """Answers with what the server made of the request; a few paths misbehave on purpose."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []
        self.outcomes: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        path = request.path
        if path == b"/slow":
            self.pending.append(request)
            request.notifyFinish().addCallbacks(self.outcomes.append, self.outcomes.append)
            return NOT_DONE_YET
        if path in (b"/short", b"/long"):
            request.setHeader(b"content-length", b"5")
            request.write(b"abc" if path == b"/short" else b"abcdefgh")
            request.finish()
            return NOT_DONE_YET
        if path == b"/stream":
            request.write(b"abc")
            request.write(b"def")
            request.finish()
            return NOT_DONE_YET
        return b"GET %s host=%s" % (path, request.getRequestHostname())

    def render_POST(self, request: Any) -> bytes:
        return b"POST %s %d" % (request.path, len(request.content.read()))

    def render_OPTIONS(self, request: Any) -> bytes:
        return b"OPTIONS " + request.uri


@pytest.fixture
def echo() -> Iterator[tuple[ServedSite, Echo]]:
    resource = Echo()
    site = server.Site(resource)
    site.maxBodySize = 100
    with serving(site) as served:
        yield served, resource
        assert not served.errors


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, then read until the server closes (it must, within `timeout`)."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return out


def statuses(data: bytes) -> list[int]:
    """The status codes of the responses in `data` (a body may run into the next one)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


# -- request framing -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n",  # no Host in 1.1
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n",  # two hosts: which one?
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n",
        b"GET * HTTP/1.1\r\nHost: x\r\n",  # asterisk-form is for OPTIONS only
        b"GET ftp://x/a HTTP/1.1\r\nHost: x\r\n",
        b"GET http:///a HTTP/1.1\r\nHost: x\r\n",
    ],
)
def test_bad_framing_is_400_and_closes(echo: Any, head: bytes) -> None:
    served, _ = echo
    out = exchange(served.port, head + b"\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(out) == [400], out
    assert b"Connection: close" in out


def test_http10_without_host_is_served(echo: Any) -> None:
    served, _ = echo
    assert request(served.port, b"GET /a HTTP/1.0\r\n\r\n").status == 200


def test_options_asterisk_is_served(echo: Any) -> None:
    served, _ = echo
    response = request(served.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.status == 200 and response.body == b"OPTIONS *"


def test_absolute_form_host_overrides_the_host_header(echo: Any) -> None:
    served, _ = echo
    response = request(
        served.port,
        b"GET http://u@Target.example:81/p?q=1 HTTP/1.1\r\n"
        b"Host: other\r\nConnection: close\r\n\r\n",
    )
    assert response.body == b"GET /p host=Target.example"


def test_absolute_form_picks_the_virtual_host() -> None:
    root = vhost.NamedVirtualHost()
    root.addHost(b"a.example", Echo())
    with serving(server.Site(root)) as served:
        data = b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n"
        assert request(served.port, data).status == 200


def test_http10_expect_100_continue_is_ignored(echo: Any) -> None:
    served, _ = echo
    with connect(served.port, 5.0) as sock:
        sock.sendall(b"POST /p HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # a 1.0 client would take a 100 for the answer
            sock.recv(100)
        sock.settimeout(5.0)
        sock.sendall(b"abc")
        response = ResponseReader(sock).read()
    assert response.status == 200 and response.body == b"POST /p 3"


def test_expect_100_continue_with_a_body_too_large_gets_413_not_100(echo: Any) -> None:
    served, _ = echo
    data = b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n"
    out = exchange(served.port, data)
    assert statuses(out) == [413] and b"100 Continue" not in out


def test_http10_transfer_encoding_never_keeps_the_connection(echo: Any) -> None:
    served, _ = echo
    data = (
        b"POST /p HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.0\r\n\r\n"
    )
    out = exchange(served.port, data)
    assert statuses(out) == [200] and b"smuggled" not in out


# -- delivery and pipelining -----------------------------------------------------------------
PIPELINE = (
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n"
    b"2\r\nde\r\n0\r\nTrailer: t\r\n\r\n"
    b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /q HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz"
    b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
)


def check_pipeline(reader: ResponseReader) -> None:
    assert reader.read().body == b"GET /a host=x"
    assert reader.read().body == b"POST /p 5"
    head = reader.read(head=True)
    assert head.status == 200 and head.body == b""
    assert reader.read().body == b"POST /q 4"
    last = reader.read()
    assert last.body == b"abcdef" and last.headers[b"connection"] == b"close"
    assert reader.at_eof()


def test_pipeline_sent_one_byte_at_a_time(echo: Any) -> None:
    served, _ = echo
    with connect(served.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(PIPELINE)):
            sock.send(PIPELINE[i : i + 1])
        check_pipeline(ResponseReader(sock))


def test_pipeline_sent_at_once(echo: Any) -> None:
    served, _ = echo
    with connect(served.port) as sock:
        sock.sendall(PIPELINE)
        check_pipeline(ResponseReader(sock))


def test_error_in_the_middle_of_a_pipeline_behind_a_slow_response(echo: Any) -> None:
    served, resource = echo
    with connect(served.port) as sock:
        sock.sendall(
            b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"80\r\n" + b"y" * 128 + b"\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        wait_for(lambda: resource.pending, what="the slow request")

        def release() -> None:
            slow = resource.pending.pop()
            slow.write(b"slow")
            slow.finish()

        served.call(release)
        reader = ResponseReader(sock)
        assert reader.read().body == b"slow"
        assert reader.read().body == b"GET /c host=x"
        error = reader.read()
        assert error.status == 413 and error.headers[b"connection"] == b"close"
        assert reader.at_eof()


def test_connection_close_in_the_middle_of_a_pipeline(echo: Any) -> None:
    served, _ = echo
    out = exchange(
        served.port,
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert statuses(out) == [200, 200] and b"/3" not in out


def test_http10_keep_alive_only_when_asked(echo: Any) -> None:
    served, _ = echo
    out = exchange(
        served.port,
        b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        b"GET /2 HTTP/1.0\r\n\r\nGET /3 HTTP/1.0\r\n\r\n",
    )
    assert statuses(out) == [200, 200] and b"Connection: keep-alive" in out


def test_disconnect_during_a_pending_response_errbacks_once(echo: Any) -> None:
    served, resource = echo
    with connect(served.port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: resource.pending, what="the slow request")
        served.call(lambda: resource.pending[0].write(b"part"))
        assert sock.recv(1000).startswith(b"HTTP/1.1 200")
    wait_for(lambda: resource.outcomes, what="the errback")
    slow = resource.pending.pop()
    served.call(lambda: (slow.write(b"late"), slow.finish()))  # harmless once gone
    assert len(resource.outcomes) == 1 and isinstance(resource.outcomes[0], Exception)


# -- response framing ------------------------------------------------------------------------
@pytest.mark.parametrize("path", [b"/short", b"/long"])
def test_body_not_matching_its_content_length_never_desyncs_the_connection(
    echo: Any, path: bytes, caplog: Any
) -> None:
    served, _ = echo
    with caplog.at_level(logging.ERROR, logger="forkd.web"):
        out = exchange(
            served.port,
            b"GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n" % path,
        )
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length: 5" in head
    assert body == (b"abc" if path == b"/short" else b"abcde")  # then closed: no /next
    assert "Content-Length" in caplog.text


# -- static files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory: Any) -> Iterator[tuple[ServedSite, str]]:
    root = tmp_path_factory.mktemp("www")
    (root / "f.txt").write_bytes(b"0123456789")
    (root / "empty").write_bytes(b"")
    (root / "evil.example").mkdir()
    listed = root / "listed"
    listed.mkdir()
    for name in [b"<script>alert(1)<\\script>", b'a"onmouseover=x', b"\xff\xfe raw", b"j:x"]:
        (listed / os.fsdecode(name)).write_bytes(b"")
    with serving(server.Site(static.File(str(root)))) as served:
        yield served, str(root)


def fetch(port: int, path: bytes, headers: bytes = b"", method: bytes = b"GET") -> Any:
    data = b"%s %s HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n" % (method, path, headers)
    return request(port, data, head=method == b"HEAD")


@pytest.mark.parametrize(
    ("path", "spec", "status", "body"),
    [
        (b"/f.txt", b"bytes=0-0", 206, b"0"),
        (b"/f.txt", b"bytes=-100", 206, b"0123456789"),
        (b"/f.txt", b"bytes=-0", 416, None),
        (b"/f.txt", b"bytes=10-", 416, None),
        (b"/f.txt", b"bytes=10-20", 416, None),
        (b"/f.txt", b"bytes=5-2", 200, b"0123456789"),
        (b"/f.txt", b"bytes=0-1,3-4", 200, b"0123456789"),
        (b"/empty", b"bytes=0-0", 416, None),
        (b"/empty", b"bytes=-5", 416, None),
        (b"/empty", b"bytes=0-", 416, None),
    ],
)
def test_range_edges(tree: Any, path: bytes, spec: bytes, status: int, body: Any) -> None:
    served, _ = tree
    response = fetch(served.port, path, b"Range: %s\r\n" % spec)
    assert response.status == status
    if body is not None:
        assert response.body == body
    else:
        assert response.headers[b"content-range"].startswith(b"bytes */")


def test_conditional_requests(tree: Any) -> None:
    served, _ = tree
    etag = fetch(served.port, b"/f.txt").headers[b"etag"]
    assert fetch(served.port, b"/f.txt", b'If-None-Match: "x", %s\r\n' % etag).status == 304
    assert fetch(served.port, b"/f.txt", b"If-None-Match: W/%s\r\n" % etag).status == 304
    assert fetch(served.port, b"/f.txt", b"If-None-Match: *\r\n").status == 304
    assert fetch(served.port, b"/f.txt", b'If-None-Match: "x"\r\n').status == 200
    assert fetch(served.port, b"/f.txt", b"If-Modified-Since: garbage\r\n").status == 200
    now = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()
    assert fetch(served.port, b"/f.txt", b"If-Modified-Since: %s\r\n" % now).status == 304


def test_if_modified_since_in_the_future_is_ignored(tree: Any) -> None:
    served, _ = tree
    future = b"If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n"
    assert fetch(served.port, b"/f.txt", future).status == 200


@pytest.mark.parametrize("path", [b"//evil.example", b"///evil.example", b"//evil.example?a=b"])
def test_directory_redirect_is_never_to_another_host(tree: Any, path: bytes) -> None:
    served, _ = tree
    response = fetch(served.port, path)
    assert response.status == 301
    location = response.headers[b"location"]
    assert location.startswith(b"/evil.example/") and not location.startswith(b"//")


def test_listing_escapes_hostile_names_and_stays_utf8(tree: Any) -> None:
    served, _ = tree
    response = fetch(served.port, b"/listed/")
    page = response.body.decode("utf-8")  # raises if a raw non-UTF-8 name leaked through
    assert "<script>" not in page and 'a"onmouseover' not in page
    assert 'href="%FF%FE%20raw"' in page and "\ufffd\ufffd raw" in page
    assert 'href="j%3Ax"' in page  # never a scheme


@pytest.mark.parametrize(
    "path",
    [
        b"/f.txt;x=1",
        b"/f.txt%00",
        b"/%c0%ae%c0%ae/f.txt",
        b"/listed%2f..%2ff.txt",
        b"/%2e%2e/f.txt",
    ],
)
def test_odd_urls_find_nothing(tree: Any, path: bytes) -> None:
    served, _ = tree
    assert fetch(served.port, path).status == 404


def test_head_responses_leak_no_body_into_the_pipeline(tree: Any) -> None:
    served, _ = tree
    with connect(served.port) as sock:
        sock.sendall(
            b"HEAD /f.txt HTTP/1.1\r\nHost: x\r\n\r\nHEAD /listed/ HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\nHEAD /f.txt HTTP/1.1\r\nHost: x\r\n"
            b"Range: bytes=20-\r\n\r\nGET /f.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reader = ResponseReader(sock)
        assert [reader.read(head=True).status for _ in range(4)] == [200, 200, 404, 416]
        assert reader.read().body == b"0123456789"
        assert reader.at_eof()


def test_file_truncated_while_sent_closes_without_garbage(tmp_path: Any) -> None:
    size = 8 * 1024 * 1024
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * size)
    with serving(server.Site(static.File(str(tmp_path)))) as served, connect(served.port) as sock:
        sock.sendall(
            b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        first = sock.recv(4096)
        assert b"Content-Length: %d" % size in first
        os.truncate(big, 1024 * 1024)
        received = len(first)
        while True:  # the server must close: the socket's timeout fails the test otherwise
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            assert b"HTTP/1.1" not in chunk
            received += len(chunk)
        assert received < size
