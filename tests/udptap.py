"""A tap with a new transport type written the seed's way: a UDP port.

"Writing New Transport Types": a pickle-safe port class with startListening(), fileno() and
doRead(); doRead builds a transport, calls the factory's buildProtocol and makeConnection.
No `serve` method, so forkd's workers drive it with the event loop's reader callback.
Each datagram is answered with "<data> <worker pid>".
"""

from __future__ import annotations

import os
import socket
from typing import Any

from forkd import usage
from forkd.protocol import Factory, Protocol

usage_message = "UDP echo: a new transport type in the seed's shape"


class DatagramTransport:
    """The transport one datagram's protocol sees: replies go back to the sender."""

    def __init__(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        self.sock = sock
        self.peer = peer
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError("data must be bytes")
        self.sock.sendto(data, self.peer)

    def loseConnection(self) -> None:
        self.disconnecting = True

    def getPeer(self) -> tuple[str, str, int]:
        return ("INET_UDP", *self.peer)


class UDPPort:
    """A UDP port: the seed's port interface, and nothing else."""

    def __init__(self, port: int, factory: Any, interface: str = "127.0.0.1") -> None:
        self.port = port
        self.factory = factory
        self.interface = interface
        self.socket: socket.socket | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["socket"] = None  # process-specific: thrown out, as the seed says
        return state

    @property
    def key(self) -> str:
        return f"udp:{self.interface}:{self.port}"

    def __repr__(self) -> str:
        return f"<{type(self.factory).__module__}.{type(self.factory).__name__} on udp {self.port}>"

    def startListening(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.interface, self.port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.socket = sock

    def fileno(self) -> int:
        assert self.socket is not None
        return self.socket.fileno()

    def stopListening(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def doRead(self) -> None:
        assert self.socket is not None
        try:
            data, peer = self.socket.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return  # another worker took this datagram
        transport = DatagramTransport(self.socket, peer)
        protocol = self.factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        protocol.connectionLost(None)

    def doWrite(self) -> None:
        """Datagrams are sent at once; nothing is ever buffered."""

    def connectionLost(self) -> None:
        self.stopListening()


class PidEcho(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data + b" %d" % os.getpid())


class PidEchoFactory(Factory):
    protocol = PidEcho


class Options(usage.Options):
    optParameters = [["port", "p", 0, "UDP port", usage.portCoerce]]


def getPorts(app: Any, config: Options) -> list[tuple[Any, Factory]]:
    factory = PidEchoFactory()
    return [(UDPPort(config["port"], factory), factory)]


def ask(port: int, payload: bytes, timeout: float = 5.0) -> tuple[bytes, int]:
    """Send one datagram; (echoed data, pid of the worker that answered)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, ("127.0.0.1", port))
        reply, _ = sock.recvfrom(65536)
    data, pid = reply.rsplit(b" ", 1)
    return data, int(pid)
