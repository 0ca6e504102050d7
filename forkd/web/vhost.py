"""NamedVirtualHost: serves a different resource tree per Host header (twisted.web.vhost).

    root = vhost.NamedVirtualHost()
    root.addHost(b"example.com", static.File("/srv/example"))
    root.default = static.File("/srv/default")
    site = server.Site(root)

Host names match case-insensitively, with or without the `:port`; a request whose host is
not known gets `default` (a 404 page unless set). Picklable like any resource.
"""

from __future__ import annotations

from typing import Any

from forkd.web.resource import NoResource, Resource


def host_key(host: bytes | str) -> bytes:
    """`Example.COM:8080` -> b"example.com"; `[::1]:80` -> b"[::1]"."""
    if isinstance(host, str):
        host = host.encode("idna") if host.isascii() is False else host.encode("ascii")
    host = host.strip().lower()
    if host.startswith(b"["):
        return host.split(b"]", 1)[0] + b"]"
    if host.count(b":") == 1:
        host = host.split(b":", 1)[0]
    return host.rstrip(b".")


class NamedVirtualHost(Resource):
    """Picks the resource for a request by its Host header."""

    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[bytes, Resource] = {}
        self.default: Resource | None = None

    def addHost(self, name: bytes | str, resource: Resource) -> None:
        """Serve `resource` for Host `name` (case-insensitive, port ignored)."""
        self.hosts[host_key(name)] = resource

    def removeHost(self, name: bytes | str) -> None:
        del self.hosts[host_key(name)]

    def _getResourceForRequest(self, request: Any) -> Resource:
        host = request.getHeader(b"host")
        if host:
            resource = self.hosts.get(host_key(host))
            if resource is not None:
                return resource
        return self.default or NoResource("No such host.")

    def render(self, request: Any) -> Any:
        return self._getResourceForRequest(request).render(request)

    def getChild(self, path: bytes, request: Any) -> Resource:
        resource = self._getResourceForRequest(request)
        if resource.isLeaf:
            request.postpath.insert(0, request.prepath.pop())
            return resource
        return resource.getChildWithDefault(path, request)
