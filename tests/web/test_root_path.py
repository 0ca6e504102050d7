"""--root-path: the WSGI SCRIPT_NAME / PATH_INFO split and the ASGI root_path, for a proxy
that passes the prefix on (gunicorn's SCRIPT_NAME) and one that strips it (uvicorn's)."""

from __future__ import annotations

import json
from typing import Any

import flask
import pytest

from forkd.testing import StringTransport, connect
from forkd.web import server
from forkd.web.asgi import scope_for
from forkd.web.resource import Resource
from forkd.web.wsgi import WSGIResource, environ_for, script_and_path
from tests.webserving import get, serving
from workers.hosting import HostedSite


class Kept(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.requests.append(request)
        return b"ok"


def request_for(path: bytes, mount: bytes = b"") -> Any:
    """A real forkd.web request for `path`, its resource mounted at `mount` (or the root)."""
    kept = Kept()
    root: Resource = kept
    if mount:
        root = Resource()
        root.putChild(mount, kept)
    channel = connect(server.Site(root), StringTransport())
    channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
    return kept.requests[0]


@pytest.mark.parametrize(
    ("path", "root", "split"),
    [
        (b"/items", "", ("", "/items")),
        (b"/a%20b/c", "", ("", "/a b/c")),
        (b"/", "", ("", "/")),
        (b"/api/items", "/api", ("/api", "/items")),  # the proxy passed the prefix on
        (b"/api", "/api", ("/api", "")),
        (b"/api/", "/api", ("/api", "/")),
        (b"/items", "/api", ("/api", "/items")),  # the proxy stripped it
        (b"/", "/api", ("/api", "/")),
        (b"/apiary", "/api", ("/api", "/apiary")),  # a prefix only at a segment boundary
        (b"/v1/api/x", "/v1/api", ("/v1/api", "/x")),
        (b"/api/a%2Fb", "/api", ("/api", "/a/b")),
    ],
)
def test_script_name_and_path_info(path: bytes, root: str, split: tuple[str, str]) -> None:
    request = request_for(path)
    assert script_and_path(request, root) == split
    environ = environ_for(request, root_path=root)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == split


def test_a_resource_mounted_in_the_tree_is_below_the_root_path() -> None:
    request = request_for(b"/app/x", mount=b"app")
    assert script_and_path(request) == ("/app", "/x")
    assert script_and_path(request, "/api") == ("/api/app", "/x")


@pytest.mark.parametrize(
    ("path", "root", "scope_path", "raw"),
    [
        (b"/items", "", "/items", b"/items"),
        (b"/api/items", "/api", "/api/items", b"/api/items"),
        (b"/items", "/api", "/api/items", b"/api/items"),  # uvicorn: root_path + path
        (b"/api", "/api", "/api", b"/api"),
        (b"/apiary", "/api", "/api/apiary", b"/api/apiary"),
        (b"/a%20b", "/api", "/api/a b", b"/api/a%20b"),
    ],
)
def test_the_asgi_path_includes_the_root_path(
    path: bytes, root: str, scope_path: str, raw: bytes
) -> None:
    scope = scope_for(request_for(path), root)
    assert (scope["root_path"], scope["path"], scope["raw_path"]) == (root, scope_path, raw)


def test_flask_builds_its_urls_under_the_root_path() -> None:
    app = flask.Flask("rooted")

    @app.get("/where")
    def where() -> Any:
        return {"url": flask.url_for("where"), "path": flask.request.path}

    with serving(server.Site(WSGIResource(app, threads=1, root_path="/api"))) as site:
        for path in (b"/api/where", b"/where"):
            assert json.loads(get(site.port, path).body) == {"url": "/api/where", "path": "/where"}
        assert get(site.port, b"/elsewhere").status == 404


def test_a_hosted_site_gives_its_root_path_to_the_resource(tmp_path: Any) -> None:
    (tmp_path / "rootedapp.py").write_text(
        "def app(environ, start_response):\n    return []\n"
        "async def asgi(scope, receive, send):\n    pass\n"
    )
    for spec, interface in (("rootedapp:app", "wsgi"), ("rootedapp:asgi", "asgi")):
        site = HostedSite(spec, str(tmp_path), interface, settings={"rootPath": "/api"})
        site.startFactory()
        try:
            assert site.resource.root_path == "/api", interface  # type: ignore[attr-defined]
        finally:
            site.stopFactory()
