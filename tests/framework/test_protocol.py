"""Protocol, Factory and Transport: the seed's semantics on a real event loop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from forkd import protocol as proto_mod
from forkd.ports import TCPPort, UNIXPort
from forkd.protocol import ConnectionDone, Factory, Protocol, Transport
from forkd.testing import StringTransport, connect, disconnect


class SeedEcho(Protocol):
    """Written as in the seed: connectionLost takes no reason."""

    def connectionMade(self):
        self.factory.events.append(("made", self.transport.getPeer()[0]))

    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self):
        self.factory.events.append(("lost",))


class ModernEcho(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data.upper())

    def connectionLost(self, reason: BaseException | None = None) -> None:
        self.factory.events.append(("lost", type(reason).__name__))


class Recording(Factory):
    def __init__(self, protocol: type) -> None:
        self.protocol = protocol
        self.events: list[tuple] = []


def test_data_received_is_the_subclass_function_itself() -> None:
    # The hot path: asyncio calls data_received, which must be the user's own function.
    assert SeedEcho.data_received is SeedEcho.__dict__["dataReceived"]
    assert ModernEcho.data_received is ModernEcho.__dict__["dataReceived"]


def test_connection_lost_arity_is_detected() -> None:
    assert SeedEcho._lost_takes_reason is False
    assert ModernEcho._lost_takes_reason is True


def test_string_transport_round_trip() -> None:
    factory = Recording(SeedEcho)
    p = connect(factory, StringTransport())
    p.dataReceived(b"hello")
    assert p.transport.value() == b"hello"
    assert p.connected == 1 and factory.events == [("made", "INET")]
    with pytest.raises(TypeError):
        p.transport.write("text")
    disconnect(p)
    assert factory.events[-1] == ("lost",)


def test_build_protocol_sets_factory() -> None:
    factory = Recording(ModernEcho)
    p = factory.buildProtocol(("INET", "127.0.0.1", 1))
    assert isinstance(p, ModernEcho) and p.factory is factory


def test_factory_start_stop_once_per_shared_ports() -> None:
    calls: list[str] = []

    class Counted(Factory):
        def startFactory(self) -> None:
            calls.append("start")

        def stopFactory(self) -> None:
            calls.append("stop")

    f = Counted()
    f.doStart()
    f.doStart()
    f.doStop()
    assert calls == ["start"]
    f.doStop()
    f.doStop()  # extra stop is harmless
    assert calls == ["start", "stop"]


async def _serve(port_obj: object) -> asyncio.AbstractServer:
    port_obj.startListening()  # type: ignore[attr-defined]
    return await port_obj.serve(asyncio.get_running_loop())  # type: ignore[attr-defined]


def _exchange(address, family: int, payload: bytes) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_seed_protocol_over_real_tcp_socket() -> None:
    factory = Recording(SeedEcho)

    async def scenario() -> bytes:
        port = TCPPort(0, factory, interface="127.0.0.1")
        server = await _serve(port)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(
            None, _exchange, ("127.0.0.1", port.port), socket.AF_INET, b"x" * 100_000
        )
        deadline = loop.time() + 5
        while ("lost",) not in factory.events and loop.time() < deadline:
            await asyncio.sleep(0.01)
        server.close()
        port.stopListening()
        return reply

    assert run(scenario()) == b"x" * 100_000
    assert factory.events == [("made", "INET"), ("lost",)]


def test_modern_protocol_gets_reason_and_ipv6_peer() -> None:
    factory = Recording(ModernEcho)
    peers = []

    class Peeking(ModernEcho):
        def connectionMade(self) -> None:
            peers.append((self.transport.getPeer(), self.transport.getHost()))

    factory.protocol = Peeking

    async def scenario() -> bytes:
        port = TCPPort(0, factory, interface="::1")
        server = await _serve(port)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(
            None, _exchange, ("::1", port.port), socket.AF_INET6, b"abc"
        )
        deadline = loop.time() + 5
        while not factory.events and loop.time() < deadline:
            await asyncio.sleep(0.01)
        server.close()
        port.stopListening()
        return reply

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    assert run(scenario()) == b"ABC"
    ((peer, host),) = peers
    assert peer[0] == "INET6" and peer[1] == "::1" and isinstance(peer[2], int)
    assert host[0] == "INET6"
    assert factory.events == [("lost", "ConnectionDone")]


def test_unix_port_peer_tuple_and_custom_build_protocol(tmp_path) -> None:
    seen = []

    class Picky(Factory):
        protocol = ModernEcho
        events: list = []

        def buildProtocol(self, addr):
            seen.append(addr)
            if len(seen) == 1:
                return None  # refuse the first connection
            return super().buildProtocol(addr)

    factory = Picky()
    path = str(tmp_path / "s.sock")

    async def scenario() -> list[bytes]:
        port = UNIXPort(path, factory)
        server = await _serve(port)
        loop = asyncio.get_running_loop()
        try:
            first = await loop.run_in_executor(None, _exchange, path, socket.AF_UNIX, b"no")
        except (ConnectionResetError, BrokenPipeError):  # refused: closed at once
            first = b""
        second = await loop.run_in_executor(None, _exchange, path, socket.AF_UNIX, b"yes")
        server.close()
        port.stopListening()
        return [first, second]

    assert run(scenario()) == [b"", b"YES"]
    assert seen[0][0] == "UNIX"


def test_duck_typed_seed_protocol_is_adapted() -> None:
    class Plain:  # the seed: "no need to derive from this class"
        def makeConnection(self, transport, server=None):
            self.transport = transport

        def dataReceived(self, data):
            self.transport.write(data[::-1])

        def connectionLost(self):
            pass

    class PlainFactory(Factory):
        def buildProtocol(self, addr):
            return Plain()

    async def scenario() -> bytes:
        port = TCPPort(0, PlainFactory(), interface="127.0.0.1")
        server = await _serve(port)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(
            None, _exchange, ("127.0.0.1", port.port), socket.AF_INET, b"abc"
        )
        server.close()
        port.stopListening()
        return reply

    assert run(scenario()) == b"cba"


class _FakeLoopTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closed = False

    def write(self, data):  # pragma: no cover - not called
        pass

    def writelines(self, data):  # pragma: no cover - not called
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name, default=None):
        return default


def test_backpressure_pauses_reading_or_the_registered_producer() -> None:
    p = ModernEcho()
    loop_transport = _FakeLoopTransport()
    p.connection_made(loop_transport)  # type: ignore[arg-type]
    assert isinstance(p.transport, Transport) and p in proto_mod.stats.open
    p.pause_writing()
    assert loop_transport.reading is False
    p.resume_writing()
    assert loop_transport.reading is True

    class Producer:
        state = "producing"

        def pauseProducing(self) -> None:
            self.state = "paused"

        def resumeProducing(self) -> None:
            self.state = "producing"

    producer = Producer()
    p.transport.registerProducer(producer, True)
    p.pause_writing()
    assert producer.state == "paused" and loop_transport.reading is True
    p.resume_writing()
    assert producer.state == "producing"
    p.factory = Recording(ModernEcho)
    p.connection_lost(None)
    assert p not in proto_mod.stats.open
    assert p.factory.events == [("lost", "ConnectionDone")]


def test_connection_lost_with_error_gives_connection_lost_reason() -> None:
    p = ModernEcho()
    p.factory = Recording(ModernEcho)
    p.connection_made(_FakeLoopTransport())  # type: ignore[arg-type]
    p.connection_lost(ConnectionResetError(104, "reset"))
    assert p.factory.events == [("lost", "ConnectionLost")]
    assert not isinstance(ConnectionDone(), proto_mod.ConnectionLost)


def test_connection_arriving_while_the_worker_drains_is_told_to_drain() -> None:
    """The loop may hand over a connection it accepted just before the servers closed."""
    drained: list[bool] = []

    class Draining(ModernEcho):
        def connectionDraining(self) -> None:
            drained.append(True)

    p = Draining()
    proto_mod.stats.draining = True
    try:
        p.connection_made(_FakeLoopTransport())  # type: ignore[arg-type]
    finally:
        proto_mod.stats.draining = False
    assert drained == [True]
    q = Draining()
    q.connection_made(_FakeLoopTransport())  # type: ignore[arg-type]
    assert drained == [True]
    proto_mod.stats.open.clear()
