"""Hello: the smallest useful resource, `Hello, world!\\n` for every GET.

It measures the framework's own cost per request (the benchmarks serve it), and it is what
`mktap hello --port P` serves.
"""

from __future__ import annotations

from typing import Any

from forkd.web.resource import Resource

BODY = b"Hello, world!\n"


class Hello(Resource):
    """A leaf answering every path with a fixed text/plain body."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return BODY
