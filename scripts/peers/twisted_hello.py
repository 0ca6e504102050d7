"""Twisted web hello: a leaf Resource on the epoll reactor, access log off.

Run as `python twisted_hello.py PORT`. Twisted has no built-in pre-fork mode, so the
benchmark reports it with one process only.
"""

from __future__ import annotations

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402  (the reactor must be installed first)
from twisted.web import resource, server  # noqa: E402

BODY = b"Hello, world!\n"


class Hello(resource.Resource):
    """Answers every GET with BODY."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return BODY


class QuietSite(server.Site):
    """A Site without the access log: no peer in the benchmark writes one."""

    def log(self, request: server.Request) -> None:
        pass


def main() -> None:
    port = int(sys.argv[1])
    reactor.listenTCP(port, QuietSite(Hello()), backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
