"""The hello tap: `Hello, world!` over HTTP, to measure forkd.web's own cost per request.

mktap hello --port 8080 && forkd start hello.tap -w 2
"""

from __future__ import annotations

from typing import Any

from forkd import usage
from forkd.ports import TCPPort
from forkd.web.hello import Hello
from forkd.web.server import Site
from workers.site_options import ACCESS_LOG_OPTIONS, AccessLogAlias, tap_parameters

usage_message = """Answer every GET with `Hello, world!` (text/plain): the smallest HTTP
server forkd.web makes, for benchmarks and smoke tests.
"""


class Options(AccessLogAlias):
    optParameters = [
        ["port", "p", 8080, "TCP port to listen on.", usage.portCoerce],
        [
            "interface",
            "i",
            "127.0.0.1",
            "Address to listen on: loopback unless told (0.0.0.0: every IPv4 address, '::': IPv6).",
        ],
    ] + tap_parameters(ACCESS_LOG_OPTIONS)


def getPorts(app: Any, config: Any) -> list[tuple[Any, Site]]:
    site = Site(Hello(), logPath=config["access-logfile"], logFormat=config["access-logformat"])
    return [(TCPPort(config["port"], site, interface=config["interface"]), site)]
