"""Resource trees, the Request API, NamedVirtualHost, Headers (no sockets)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from forkd.testing import Clock, StringTransport, connect
from forkd.web import resource, server, vhost
from forkd.web.headers import Headers
from forkd.web.hello import Hello
from tests.web.test_channel import responses


class Show(resource.Resource):
    """Renders what the request looked like, so tests can check traversal and parsing."""

    isLeaf = True

    def __init__(self, name: bytes = b"show") -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Any) -> bytes:
        args = b";".join(k + b"=" + b",".join(v) for k, v in sorted(request.args.items()))
        return b"|".join([self.name, b"/".join(request.prepath), b"/".join(request.postpath), args])


def serve(root: resource.Resource, data: bytes) -> Any:
    site = server.Site(root)
    site.clock = Clock()
    transport = StringTransport()
    channel = connect(site, transport)
    channel.dataReceived(data)
    return responses(transport)


def fetch(root: resource.Resource, path: bytes, headers: bytes = b"") -> Any:
    # HTTP/1.1 requires a Host header (400 without one); 1.0 tests a request without one.
    proto = b"HTTP/1.1" if b"host:" in headers.lower() else b"HTTP/1.0"
    [response] = serve(root, b"GET %s %s\r\n%s\r\n" % (path, proto, headers))
    return response


def test_put_child_and_leaf_postpath() -> None:
    root = resource.Resource()
    api = resource.Resource()
    root.putChild(b"api", api)
    api.putChild(b"v1", Show())
    assert fetch(root, b"/api/v1/users/7?a=1&a=2&b=").body == b"show|api/v1|users/7|a=1,2;b="
    assert fetch(root, b"/nothing").status == 404
    assert fetch(root, b"/api/v1%2Fx").status == 404  # %2F is inside one segment


def test_percent_decoded_segments() -> None:
    root = resource.Resource()
    root.putChild(b"a b", Show())
    assert fetch(root, b"/a%20b/c%2Fd").body == b"show|a b|c/d|"


def test_get_child_makes_children_on_demand() -> None:
    class Dynamic(resource.Resource):
        def getChild(self, path: bytes, request: Any) -> resource.Resource:
            return Show(b"dyn-" + path)

    assert fetch(Dynamic(), b"/thing/x").body == b"dyn-thing|thing|x|"


def test_request_api_from_a_resource() -> None:
    seen: dict[str, Any] = {}

    class Inspect(resource.Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> bytes:
            seen.update(
                method=request.method,
                uri=request.uri,
                path=request.path,
                proto=request.clientproto,
                header=request.getHeader("X-Thing"),
                missing=request.getHeader(b"nope"),
                raw=request.requestHeaders.getRawHeaders(b"x-thing"),
                args=request.args,
                ip=request.getClientIP(),
                addr=request.getClientAddress(),
                secure=request.isSecure(),
                host=request.getRequestHostname(),
            )
            request.setResponseCode(201)
            request.setHeader("X-Str", "é")
            request.responseHeaders.addRawHeader(b"set-cookie", b"a=1")
            request.responseHeaders.addRawHeader(b"set-cookie", b"b=2")
            return b"made"

    body = b"f=1&g=2"
    [response] = serve(
        Inspect(),
        b"POST /p?q=3 HTTP/1.1\r\nHost: Example.com:8080\r\nX-Thing: one\r\nX-Thing: two\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\n" + body,
    )
    assert response.status == 201 and response.body == b"made"
    assert response.headers[b"x-str"] == "é".encode("latin-1")
    assert [v for n, v in response.headerList if n == b"Set-Cookie"] == [b"a=1", b"b=2"]
    assert seen["method"] == b"POST" and seen["uri"] == b"/p?q=3" and seen["path"] == b"/p"
    assert seen["proto"] == b"HTTP/1.1" and seen["header"] == b"two" and seen["missing"] is None
    assert seen["raw"] == [b"one", b"two"]
    assert seen["args"] == {b"q": [b"3"], b"f": [b"1"], b"g": [b"2"]}
    assert seen["ip"] == "127.0.0.1" and seen["addr"][0] == "INET" and seen["secure"] is False
    assert seen["host"] == b"Example.com"


def test_redirect_and_header_injection_refused() -> None:
    class Go(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            if request.path == b"/bad":
                request.setHeader(b"x", b"a\r\nSet-Cookie: evil=1")
            request.redirect(b"/elsewhere")
            return b""

    response = fetch(Go(), b"/go")
    assert response.status == 302 and response.headers[b"location"] == b"/elsewhere"
    bad = fetch(Go(), b"/bad")
    assert bad.status == 500 and b"set-cookie" not in bad.headers


def test_resource_returning_non_bytes_is_500() -> None:
    class Wrong(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            return "a str"

    assert fetch(Wrong(), b"/").status == 500


def test_error_pages() -> None:
    page = resource.ErrorPage(418, "Teapot <b>", "short & stout")
    response = fetch(page, b"/any")
    assert response.status == 418
    assert b"Teapot &lt;b&gt;" in response.body and b"short &amp; stout" in response.body
    assert fetch(resource.NoResource(), b"/").status == 404
    assert fetch(resource.ForbiddenResource(), b"/").status == 403


def test_put_child_rejects_bad_names() -> None:
    with pytest.raises(ValueError):
        resource.Resource().putChild(b"a/b", Hello())
    with pytest.raises(TypeError):
        resource.Resource().putChild(3, Hello())  # type: ignore[arg-type]


def _vhosts() -> vhost.NamedVirtualHost:
    hosts = vhost.NamedVirtualHost()
    hosts.addHost(b"example.com", Show(b"example"))
    hosts.addHost("Other.Example.ORG", Show(b"other"))
    hosts.addHost(b"[::1]", Show(b"v6"))
    tree = resource.Resource()
    tree.putChild(b"x", Show(b"tree-x"))
    hosts.addHost(b"tree.test", tree)
    hosts.default = Show(b"default")
    return hosts


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (b"example.com", b"example|"),
        (b"EXAMPLE.COM", b"example|"),
        (b"example.com:8080", b"example|"),
        (b"Example.Com:80", b"example|"),
        (b"example.com.", b"example|"),
        (b"other.example.org", b"other|"),
        (b"OTHER.example.org:443", b"other|"),
        (b"[::1]:8080", b"v6|"),
        (b"[::1]", b"v6|"),
        (b"unknown.test", b"default|"),
        (b"example.com.evil.test", b"default|"),
        (b"", b"default|"),
        (None, b"default|"),
    ],
)
def test_named_virtual_host_table(host: bytes | None, expected: bytes) -> None:
    header = b"" if host is None else b"Host: %s\r\n" % host
    assert fetch(_vhosts(), b"/a/b", header).body.startswith(expected)


def test_virtual_host_with_a_resource_tree_and_no_default() -> None:
    hosts = _vhosts()
    assert fetch(hosts, b"/x/rest", b"Host: tree.test\r\n").body == b"tree-x|x|rest|"
    assert fetch(hosts, b"/", b"Host: example.com\r\n").body == b"example|||"
    hosts.default = None
    assert fetch(hosts, b"/", b"Host: nowhere\r\n").status == 404
    hosts.removeHost("EXAMPLE.com")
    assert fetch(hosts, b"/", b"Host: example.com\r\n").status == 404


def test_virtual_hosts_pickle() -> None:
    hosts = pickle.loads(pickle.dumps(server.Site(_vhosts()))).resource
    assert fetch(hosts, b"/", b"Host: Other.example.org\r\n").body.startswith(b"other|")


def test_headers_collection() -> None:
    headers = Headers({b"Content-Type": [b"text/plain"]})
    assert headers.hasHeader("content-type") and b"CONTENT-TYPE" in headers
    headers.addRawHeader("X-A", "1")
    headers.addRawHeader(b"x-a", b"2")
    assert headers.getRawHeaders(b"X-A") == [b"1", b"2"]
    assert dict(headers.getAllRawHeaders())[b"X-A"] == [b"1", b"2"]
    assert headers.copy() == headers
    headers.removeHeader(b"X-A")
    assert headers.getRawHeaders(b"x-a") is None and headers.getRawHeaders(b"q", []) == []
    with pytest.raises(ValueError):
        headers.setRawHeaders(b"x", [b"a\nb"])
    with pytest.raises(TypeError):
        headers.setRawHeaders(b"x", b"abc")  # type: ignore[arg-type]


def test_notify_finish_is_awaitable() -> None:
    import asyncio

    from forkd.web.notify import Notifier

    async def main() -> Any:
        notifier = Notifier()
        asyncio.get_running_loop().call_soon(notifier.callback, 5)
        return await notifier

    assert asyncio.run(main()) == 5


def test_pre_path_url_and_is_secure() -> None:
    seen: list[Any] = []

    class Where(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            seen.append((request.prePathURL(), request.isSecure()))
            return b""

    root = resource.Resource()
    root.putChild(b"here", Where())
    fetch(root, b"/here/more", b"Host: example.com:81\r\n")
    assert seen == [(b"http://example.com:81/here", False)]


def test_a_failing_timeout_check_does_not_stop_the_others() -> None:
    from forkd.web.timeouts import Timeouts

    class Broken:
        def checkTimeout(self, now: float) -> None:
            raise RuntimeError("broken")

    class Counting:
        calls = 0

        def checkTimeout(self, now: float) -> None:
            self.calls += 1

    clock = Clock()
    timeouts = Timeouts(clock, 0.5)
    good = Counting()
    timeouts.add(Broken())
    timeouts.add(good)
    clock.advance(0.5)
    clock.advance(0.5)
    assert good.calls == 2
    timeouts.stop()
    assert clock.pending == []
