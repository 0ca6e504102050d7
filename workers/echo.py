"""The echo tap: a TCP server that sends back whatever it receives (RFC 862).

mktap echo --port 8007 && forkd start echo.tap
"""

from __future__ import annotations

from typing import Any

from forkd import usage
from forkd.ports import TCPPort
from forkd.protocol import Factory, Protocol

usage_message = """Echo server: sends back every byte it receives (RFC 862).

A model tap module: a Protocol, a Factory, Options and getPorts.
"""


class Echo(Protocol):
    """Writes each chunk straight back: the framework's hot path and nothing else."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoFactory(Factory):
    protocol = Echo


class Options(usage.Options):
    optParameters = [
        ["port", "p", 8007, "TCP port to listen on.", usage.portCoerce],
        [
            "interface",
            "i",
            "127.0.0.1",
            "Address to listen on: loopback unless told (0.0.0.0: every IPv4 address, '::': IPv6).",
        ],
    ]


def getPorts(app: Any, config: Options) -> list[tuple[Any, Factory]]:
    factory = EchoFactory()
    return [(TCPPort(config["port"], factory, interface=config["interface"]), factory)]
