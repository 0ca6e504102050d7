"""Resources: the objects a Site asks to render each request (twisted.web.resource's shape).

A `Resource` is a node in a tree: `putChild(b"name", child)` adds children,
`getChild(name, request)` makes them up on demand, and a leaf (`isLeaf = True`) receives the
rest of the path in `request.postpath`. `render(request)` calls `render_<METHOD>` (HEAD falls
back to GET) and returns the body as bytes, or `NOT_DONE_YET` when the resource will
`request.write()` and `request.finish()` later. A method the resource does not implement is
answered 405 with an `Allow` header listing the ones it does.

Resources are plain picklable objects: they live in .tap files.
"""

from __future__ import annotations

import html
from typing import Any

NOT_DONE_YET: Any = 1  # Twisted's value: render() returns it to say "I will finish later"


class UnsupportedMethod(Exception):
    """render() found no render_<METHOD>; `allowedMethods` lists the methods it has."""

    def __init__(self, allowedMethods: list[bytes]) -> None:
        super().__init__(allowedMethods)
        self.allowedMethods = allowedMethods


_method_attr: dict[bytes, str] = {}


def _attr_for(method: bytes) -> str:
    """`render_GET` for b"GET", cached so the hot path does no string building."""
    name = _method_attr.get(method)
    if name is None:
        name = "render_" + method.decode("ascii", "replace")
        if len(_method_attr) < 64:
            _method_attr[method] = name
    return name


class Resource:
    """A web resource: renders requests and holds child resources."""

    isLeaf = False
    #: rendered as soon as the request's headers are in, and handed the body piece by piece
    #: (`request.onBody(received, complete)`, `request.pauseBody()`/`resumeBody()`) instead
    #: of the whole body in `request.content`: an upload costs the worker no buffer at all
    streamsBody = False
    server: Any = None

    def __init__(self) -> None:
        self.children: dict[bytes, Resource] = {}

    def getChild(self, path: bytes, request: Any) -> Resource:
        """Make up the child called `path` (the default: there is none, 404)."""
        return NoResource()

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        """A child put with putChild, else whatever getChild makes."""
        children: dict[bytes, Resource] | None = self.__dict__.get("children")
        if children and path in children:
            return children[path]
        return self.getChild(path, request)

    def putChild(self, path: bytes | str, child: Resource) -> None:
        """Serve `child` at `<this resource's path>/<path>`."""
        if isinstance(path, str):
            path = path.encode("utf-8")
        if not isinstance(path, bytes):
            raise TypeError(f"child path must be bytes, not {type(path).__name__}")
        if b"/" in path:
            raise ValueError("a child path is one segment: it may not contain '/'")
        self.__dict__.setdefault("children", {})[path] = child
        child.server = self.server

    def delEntity(self, path: bytes) -> None:
        del self.children[path]

    def listNames(self) -> list[bytes]:
        return list(self.__dict__.get("children", {}))

    def render(self, request: Any) -> Any:
        """Call render_<METHOD>(request); HEAD uses render_GET when there is no render_HEAD."""
        method = request.method
        handler = getattr(self, _attr_for(method), None)
        if handler is None:
            raise UnsupportedMethod(allowed_methods(self))
        return handler(request)

    def render_HEAD(self, request: Any) -> Any:
        """HEAD is GET without the body (the request drops it): same headers, same length."""
        handler = getattr(self, "render_GET", None)
        if handler is None:
            raise UnsupportedMethod(allowed_methods(self))
        return handler(request)


def allowed_methods(resource: Any) -> list[bytes]:
    """The methods a resource renders, from its render_* attributes (for `Allow`)."""
    methods = sorted(
        name[7:].encode("ascii")
        for name in dir(resource)
        if name.startswith("render_") and name[7:].isupper() and name[7:].isalpha()
    )
    if b"HEAD" in methods and b"GET" not in methods:
        methods.remove(b"HEAD")
    return methods


def getChildForRequest(resource: Resource, request: Any) -> Resource:
    """Walk from `resource` along request.postpath until a leaf or the path runs out."""
    postpath = request.postpath
    prepath = request.prepath
    while postpath and not resource.isLeaf:
        element = postpath.pop(0)
        prepath.append(element)
        resource = resource.getChildWithDefault(element, request)
    return resource


class ErrorPage(Resource):
    """A page that answers every method with a fixed status, a title and a detail."""

    isLeaf = True

    def __init__(self, status: int, brief: str, detail: str) -> None:
        super().__init__()
        self.code = status
        self.brief = brief
        self.detail = detail

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        brief = html.escape(self.brief)
        return (
            f"<!DOCTYPE html>\n<html><head><title>{self.code} - {brief}</title></head>"
            f"<body><h1>{brief}</h1><p>{html.escape(self.detail)}</p></body></html>\n"
        ).encode()

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self


class NoResource(ErrorPage):
    """404: nothing lives at this path."""

    def __init__(self, message: str = "Sorry. No luck finding that resource.") -> None:
        super().__init__(404, "No Such Resource", message)


class ForbiddenResource(ErrorPage):
    """403: something lives here, but you may not see it."""

    def __init__(self, message: str = "Sorry, resource is forbidden.") -> None:
        super().__init__(403, "Forbidden Resource", message)
