"""static.File over real sockets: the seed's example, traversal, conditional and range requests,
directory handling, large files by http.client and urllib3 (zero copy) and by copying."""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import pickle
from typing import Any

import pytest
import urllib3

from forkd.testing import StringTransport, connect, wait_for
from forkd.web import server, static
from tests.webserving import ResponseReader, get, request, serving
from tests.webserving import connect as connect_socket

SECRET = b"TOP-SECRET-CONTENT"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: Any) -> pathlib.Path:
    base = tmp_path_factory.mktemp("static")
    root = base / "www"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "page.html").write_bytes(b"<p>page</p>")
    (root / "style.css").write_bytes(b"p{}")
    (root / "data.weird-ext").write_bytes(b"??")
    (root / "<script>.txt").write_bytes(b"x")
    (root / "sub" / "index.html").write_bytes(b"sub index")
    (root / "sub" / "b.txt").write_bytes(b"bravo")
    (root / "digits.txt").write_bytes(b"0123456789")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    (base / "secret.txt").write_bytes(SECRET)
    (base / "www-evil").mkdir()
    (base / "www-evil" / "secret.txt").write_bytes(SECRET)
    (root / "link-out").symlink_to(base)
    (root / "evil").symlink_to(base / "www-evil" / "secret.txt")
    (root / "link-in").symlink_to(root / "sub" / "b.txt")
    return root


@pytest.fixture(scope="module")
def served(tree: pathlib.Path) -> Any:
    with serving(server.Site(static.File(str(tree)))) as s:
        yield s


def test_the_seeds_example_path_change_takes_effect_on_the_next_request(tmp_path: Any) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    (first / "index.html").write_bytes(b"first directory")
    (second / "index.html").write_bytes(b"second directory")
    file = static.File(str(first))
    factory = server.Site(file)
    with serving(factory) as s:
        assert get(s.port, b"/").body == b"first directory"
        factory.resource.path = str(second)
        assert get(s.port, b"/").body == b"second directory"
        assert get(s.port, b"/index.html").body == b"second directory"


def test_a_file_and_its_headers(served: Any, tree: pathlib.Path) -> None:
    response = get(served.port, b"/a.txt")
    assert response.status == 200 and response.body == b"alpha\n"
    assert response.headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert response.headers[b"etag"].startswith(b'"')
    assert response.headers[b"last-modified"].endswith(b"GMT")
    assert response.headers[b"accept-ranges"] == b"bytes"


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        (b"/page.html", b"text/html; charset=utf-8"),
        (b"/style.css", b"text/css; charset=utf-8"),
        (b"/data.weird-ext", b"application/octet-stream"),
        (b"/big.bin", b"application/octet-stream"),
    ],
)
def test_mime_types(served: Any, path: bytes, ctype: bytes) -> None:
    assert get(served.port, path, method=b"HEAD").headers[b"content-type"] == ctype


def test_index_listing_and_redirect(served: Any) -> None:
    assert get(served.port, b"/sub/").body == b"sub index"
    redirect = get(served.port, b"/sub?x=1")
    assert redirect.status == 301 and redirect.headers[b"location"] == b"/sub/?x=1"
    listing = get(served.port, b"/")
    assert listing.status == 200
    assert b'href="a.txt"' in listing.body and b'href="sub/"' in listing.body
    assert b"&lt;script&gt;.txt" in listing.body and b"<script>" not in listing.body
    assert b'href="%3Cscript%3E.txt"' in listing.body


def test_listing_off_gives_403(tree: pathlib.Path) -> None:
    with serving(server.Site(static.File(str(tree), listing=False))) as s:
        assert get(s.port, b"/").status == 403
        assert get(s.port, b"/sub/").body == b"sub index"


def test_custom_index_names(tree: pathlib.Path) -> None:
    with serving(server.Site(static.File(str(tree), indexNames=["a.txt"]))) as s:
        assert get(s.port, b"/").body == b"alpha\n"


def test_head_of_a_file(served: Any) -> None:
    response = get(served.port, b"/big.bin", method=b"HEAD")
    assert response.headers[b"content-length"] == b"%d" % (3 * 1024 * 1024 + 123)
    assert response.body == b""


def test_conditional_requests_give_304(served: Any) -> None:
    first = get(served.port, b"/a.txt")
    etag, modified = first.headers[b"etag"], first.headers[b"last-modified"]
    assert get(served.port, b"/a.txt", b"If-None-Match: %s\r\n" % etag).status == 304
    assert get(served.port, b"/a.txt", b'If-None-Match: "x", %s\r\n' % etag).status == 304
    assert get(served.port, b"/a.txt", b"If-None-Match: *\r\n").status == 304
    assert get(served.port, b"/a.txt", b'If-None-Match: "nope"\r\n').status == 200
    assert get(served.port, b"/a.txt", b"If-Modified-Since: %s\r\n" % modified).status == 304
    old = b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    assert get(served.port, b"/a.txt", old).status == 200
    bad = b"If-Modified-Since: yesterday\r\n"
    assert get(served.port, b"/a.txt", bad).status == 200
    not_modified = get(served.port, b"/a.txt", b"If-None-Match: %s\r\n" % etag)
    assert not_modified.body == b"" and b"content-length" not in not_modified.headers


@pytest.mark.parametrize(
    ("spec", "status", "body", "content_range"),
    [
        (b"bytes=0-3", 206, b"0123", b"bytes 0-3/10"),
        (b"bytes=5-", 206, b"56789", b"bytes 5-9/10"),
        (b"bytes=-3", 206, b"789", b"bytes 7-9/10"),
        (b"bytes=8-100", 206, b"89", b"bytes 8-9/10"),
        (b"bytes=10-20", 416, None, b"bytes */10"),
        (b"bytes=-0", 416, None, b"bytes */10"),
        (b"bytes=0-1,4-5", 200, b"0123456789", None),
        (b"bytes=5-2", 200, b"0123456789", None),
        (b"items=0-1", 200, b"0123456789", None),
        (b"bytes=x-y", 200, b"0123456789", None),
    ],
)
def test_ranges(
    served: Any, spec: bytes, status: int, body: bytes | None, content_range: bytes | None
) -> None:
    response = get(served.port, b"/digits.txt", b"Range: %s\r\n" % spec)
    assert response.status == status
    if body is not None:
        assert response.body == body
    assert response.headers.get(b"content-range") == content_range


def test_if_range_mismatch_sends_the_whole_file(served: Any) -> None:
    response = get(served.port, b"/digits.txt", b'Range: bytes=0-1\r\nIf-Range: "old"\r\n')
    assert response.status == 200 and response.body == b"0123456789"


def test_range_of_a_large_file_uses_the_offset(served: Any, tree: pathlib.Path) -> None:
    data = (tree / "big.bin").read_bytes()
    start, end = 1_000_001, 3_000_000
    response = get(served.port, b"/big.bin", b"Range: bytes=%d-%d\r\n" % (start, end))
    assert response.status == 206 and response.body == data[start : end + 1]


HOSTILE = [
    b"/../secret.txt",
    b"/..%2fsecret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/%2e%2e%2fsecret.txt",
    b"/sub/../../secret.txt",
    b"/sub/%2e%2e/%2e%2e/secret.txt",
    b"/sub/..%2f..%2fsecret.txt",
    b"/sub/./../../secret.txt",
    b"/..%5csecret.txt",
    b"/%2e%2e%5csecret.txt",
    b"/..\\secret.txt",
    b"/%2fetc%2fpasswd",
    b"//etc/passwd",
    b"/%2F..%2F..%2Fsecret.txt",
    b"/a.txt%00.html",
    b"/%00",
    b"/link-out/secret.txt",
    b"/link-out/www-evil/secret.txt",
    b"/evil",
    b"/%252e%252e/secret.txt",
    b"/..;/secret.txt",
    b"/....//secret.txt",
    b"/sub/..",
    b"/link-out/",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_traversal_attempts_never_leave_the_root(served: Any, path: bytes) -> None:
    response = request(
        served.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path
    )
    assert response.status in (400, 403, 404), (path, response)
    assert SECRET not in response.body
    assert b"root:" not in response.body


def test_absolute_form_traversal_is_refused(served: Any) -> None:
    response = request(served.port, b"GET http://x/../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status in (400, 404) and SECRET not in response.body


def test_symlink_inside_the_root_is_served(served: Any) -> None:
    assert get(served.port, b"/link-in").body == b"bravo"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_large_file_with_http_client_and_urllib3(tree: pathlib.Path, loop: str) -> None:
    expected = _sha((tree / "big.bin").read_bytes())
    with serving(server.Site(static.File(str(tree))), loop=loop) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        for _ in range(2):  # the same keep-alive connection serves it twice
            conn.request("GET", "/big.bin")
            response = conn.getresponse()
            assert response.status == 200
            assert _sha(response.read()) == expected
        conn.close()
        with urllib3.PoolManager() as pool:
            response = pool.request("GET", f"http://127.0.0.1:{s.port}/big.bin")
            assert response.status == 200 and _sha(response.data) == expected
            response = pool.request("GET", f"http://127.0.0.1:{s.port}/a.txt")
            assert response.data == b"alpha\n"


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_client_leaving_mid_download_releases_file_and_socket(tree: pathlib.Path) -> None:
    with serving(server.Site(static.File(str(tree)))) as s:
        assert get(s.port, b"/a.txt").status == 200
        before = _fd_count()
        sock = connect_socket(s.port)
        sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        ResponseReader(sock)._line()  # the response has started
        sock.close()
        wait_for(lambda: _fd_count() <= before, message="the server to release its descriptors")
        assert get(s.port, b"/digits.txt").body == b"0123456789"


class _SlowTransport(StringTransport):
    """Calls the protocol's pause_writing whenever more than `limit` bytes are buffered."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.protocol: Any = None
        self.pauses = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.io) > self.limit and self.protocol is not None:
            self.pauses += 1
            self.protocol.pause_writing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        self.protocol.resume_writing()
        return data


def test_copying_path_respects_write_backpressure(tree: pathlib.Path) -> None:
    expected = (tree / "big.bin").read_bytes()
    transport = _SlowTransport(limit=256 * 1024)
    site = server.Site(static.File(str(tree)))
    channel = connect(site, transport)
    transport.protocol = channel
    channel.dataReceived(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    for _ in range(1000):
        if transport.value() == b"":
            break
        assert len(transport.value()) <= 256 * 1024 + 64 * 1024  # paused at the mark
        received += transport.drain()
    head, _, body = received.partition(b"\r\n\r\n")
    assert transport.pauses > 5
    assert _sha(body) == _sha(expected)


def test_file_resources_pickle_with_their_settings(tree: pathlib.Path) -> None:
    file = static.File(str(tree), indexNames=["x.html"], listing=False)
    file.putChild(b"extra", static.File(str(tree / "sub")))
    copy = pickle.loads(pickle.dumps(server.Site(file))).resource
    assert copy.path == str(tree) and copy.indexNames == ["x.html"] and copy.listing is False
    assert copy.children[b"extra"].path == str(tree / "sub")


def test_put_child_is_served_before_files(tree: pathlib.Path) -> None:
    file = static.File(str(tree))
    file.putChild(b"a.txt", static.File(str(tree / "sub" / "b.txt")))
    with serving(server.Site(file)) as s:
        assert get(s.port, b"/a.txt").body == b"bravo"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_large_bodies_go_out_by_sendfile(tree: pathlib.Path, loop: str, monkeypatch: Any) -> None:
    from forkd.web import sendfile

    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(sendfile.os, "sendfile", counting)
    with serving(server.Site(static.File(str(tree))), loop=loop) as s:
        response = get(s.port, b"/big.bin")
    assert _sha(response.body) == _sha((tree / "big.bin").read_bytes())
    assert calls, "the body was copied, not sent with sendfile"


def test_symlinked_directory_inside_the_root_is_served(tmp_path: Any) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"through the alias")
    (tmp_path / "alias").symlink_to(tmp_path / "sub")
    with serving(server.Site(static.File(str(tmp_path)))) as s:
        assert get(s.port, b"/alias/b.txt").body == b"through the alias"


def test_root_symlink_swapped_atomically_serves_the_new_release(tmp_path: Any) -> None:
    for release in ("r1", "r2"):
        (tmp_path / release).mkdir()
        (tmp_path / release / "v.txt").write_bytes(release.encode())
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "r1")
    with serving(server.Site(static.File(str(current)))) as s:
        assert get(s.port, b"/v.txt").body == b"r1"
        (tmp_path / "next").symlink_to(tmp_path / "r2")
        os.replace(tmp_path / "next", current)
        assert get(s.port, b"/v.txt").body == b"r2"


def test_file_shrinking_while_sent_aborts_the_connection(tmp_path: Any, monkeypatch: Any) -> None:
    from forkd.web import sendfile

    (tmp_path / "f.bin").write_bytes(b"x" * (static.SMALL_FILE * 3))
    transport = StringTransport()
    channel = connect(server.Site(static.File(str(tmp_path))), transport)
    real_pread = os.pread

    def shrunk(fd: int, size: int, offset: int) -> bytes:
        return b"" if offset >= static.SMALL_FILE else real_pread(fd, size, offset)

    monkeypatch.setattr(sendfile.os, "pread", shrunk)
    channel.dataReceived(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.aborted  # the promised Content-Length cannot be met
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
