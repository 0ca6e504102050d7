"""Protocol, Factory and Transport: the seed's semantics on a real event loop, and
adversarial cases on real loopback sockets.

The adversarial scenarios run under both the stdlib asyncio loop and uvloop, since the two
loops differ in exactly the corners tested there (exceptions from connection_made, writes
after close).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from forkd import protocol as proto_mod
from forkd.ports import TCPPort, UNIXPort
from forkd.protocol import (
    ConnectionDone,
    Factory,
    Protocol,
    Transport,
    address_tuple,
    protocol_factory,
)
from forkd.testing import StringTransport, connect, disconnect, wait_for_async
from tests.loops import LOOPS, run


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
    """A factory that records protocol events in order."""

    def __init__(self, protocol: type) -> None:
        self.protocol = protocol
        self.events: list[Any] = []


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


def test_seed_protocol_over_real_tcp_socket() -> None:
    factory = Recording(SeedEcho)

    async def scenario() -> bytes:
        port = TCPPort(0, factory, interface="127.0.0.1")
        server = await _serve(port)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(
            None, _exchange, ("127.0.0.1", port.port), socket.AF_INET, b"x" * 100_000
        )
        await wait_for_async(lambda: ("lost",) in factory.events, 5, message="connectionLost")
        server.close()
        port.stopListening()
        return reply

    assert run("asyncio", scenario) == b"x" * 100_000
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
        await wait_for_async(lambda: factory.events, 5, message="connectionLost")
        server.close()
        port.stopListening()
        return reply

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    assert run("asyncio", scenario) == b"ABC"
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

    assert run("asyncio", scenario) == [b"", b"YES"]
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

    assert run("asyncio", scenario) == b"cba"


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


# -- adversarial: on real loopback sockets, under asyncio and uvloop --------------------


async def serve(factory: Factory) -> tuple[asyncio.AbstractServer, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory(factory), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


async def client(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*address)


@pytest.fixture(autouse=True)
def _clean_stats() -> Any:
    """Each test counts only its own connections."""
    proto_mod.stats.open.clear()
    yield
    proto_mod.stats.open.clear()


@pytest.mark.parametrize("kind", LOOPS)
def test_exception_in_connection_made_closes_logs_and_cleans_up(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Boom(Protocol):
        def connectionMade(self) -> None:
            raise ValueError("boom in connectionMade")

        def connectionLost(self, reason: BaseException | None = None) -> None:
            self.factory.events.append(("lost", type(reason).__name__))

    factory = Recording(Boom)

    async def scenario() -> bytes:
        server, address = await serve(factory)
        reader, writer = await client(address)
        data = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed
        await wait_for_async(lambda: not proto_mod.stats.open, 5)
        await wait_for_async(lambda: len(factory.events) == 1, 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    with caplog.at_level(logging.ERROR):
        assert run(kind, scenario) == b""
    assert factory.events == [("lost", "ConnectionLost")]
    assert "boom in connectionMade" in caplog.text


@pytest.mark.parametrize("kind", LOOPS)
def test_build_protocol_raising_closes_logs_and_keeps_accepting(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    class Picky(Recording):
        calls = 0

        def buildProtocol(self, addr: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom in buildProtocol")
            return super().buildProtocol(addr)

    factory = Picky(Echo)

    async def scenario() -> tuple[bytes, bytes]:
        server, address = await serve(factory)
        reader, writer = await client(address)
        first = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        reader2, writer2 = await client(address)
        writer2.write(b"ping")
        second = await asyncio.wait_for(reader2.readexactly(4), 5)
        writer2.close()
        await wait_for_async(lambda: not proto_mod.stats.open, 5)
        server.close()
        await server.wait_closed()
        return first, second

    with caplog.at_level(logging.ERROR):
        assert run(kind, scenario) == (b"", b"ping")
    assert "boom in buildProtocol" in caplog.text


@pytest.mark.parametrize("kind", LOOPS)
def test_exception_in_data_received_closes_once(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Boom(Protocol):
        def dataReceived(self, data: bytes) -> None:
            raise ValueError("boom in dataReceived")

        def connectionLost(self, reason: BaseException | None = None) -> None:
            self.factory.events.append(("lost", type(reason).__name__))

    factory = Recording(Boom)

    async def scenario() -> bytes:
        server, address = await serve(factory)
        reader, writer = await client(address)
        writer.write(b"x")
        data = await asyncio.wait_for(reader.read(), 5)
        await wait_for_async(lambda: not proto_mod.stats.open and factory.events, 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    with caplog.at_level(logging.ERROR):
        assert run(kind, scenario) == b""
    assert factory.events == [("lost", "ConnectionLost")]
    assert "boom in dataReceived" in caplog.text


@pytest.mark.parametrize("kind", LOOPS)
def test_write_after_connection_lost_is_ignored(kind: str) -> None:
    """Twisted ignores writes to a closed transport; a late callback must not crash."""
    outcome: list[Any] = []

    class Late(Protocol):
        def connectionLost(self, reason: BaseException | None = None) -> None:
            asyncio.get_running_loop().call_soon(self.late)

        def late(self) -> None:
            try:
                self.transport.write(b"late")
                self.transport.writeSequence([b"a", bytearray(b"b"), memoryview(b"c")])
                self.transport.loseConnection()
                self.transport.abortConnection()
                outcome.append("ok")
            except Exception as e:  # noqa: BLE001 - recorded for the assertion
                outcome.append(repr(e))

    factory = Recording(Late)

    async def scenario() -> None:
        server, address = await serve(factory)
        reader, writer = await client(address)
        await wait_for_async(lambda: len(proto_mod.stats.open) == 1, 5)
        writer.transport.abort()
        await wait_for_async(lambda: bool(outcome), 5)
        server.close()
        await server.wait_closed()

    run(kind, scenario)
    assert outcome == ["ok"]


@pytest.mark.parametrize("kind", LOOPS)
def test_write_after_lose_connection_is_not_sent(kind: str) -> None:
    class Closer(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"x" * 100_000)
            self.transport.loseConnection()
            self.transport.write(b"AFTER")

    factory = Recording(Closer)

    async def scenario() -> bytes:
        server, address = await serve(factory)
        reader, writer = await client(address)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    assert run(kind, scenario) == b"x" * 100_000


@pytest.mark.parametrize("kind", LOOPS)
def test_write_sequence_mixed_buffers(kind: str) -> None:
    class Mixed(Protocol):
        def connectionMade(self) -> None:
            self.transport.writeSequence([b"ab", bytearray(b"cd"), memoryview(b"xefx")[1:3], b""])
            self.transport.loseConnection()

    async def scenario() -> bytes:
        server, address = await serve(Recording(Mixed))
        reader, writer = await client(address)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    assert run(kind, scenario) == b"abcdef"


@pytest.mark.parametrize("kind", LOOPS)
def test_producer_stopped_on_connection_lost_and_not_resumed_after(kind: str) -> None:
    """A streaming producer writing to a slow peer: paused by backpressure, stopped (never
    resumed) once the connection is gone."""

    class Producer:
        def __init__(self, proto: Protocol) -> None:
            self.proto = proto
            self.events: list[str] = []
            self.paused = False

        def pauseProducing(self) -> None:
            self.events.append("pause")
            self.paused = True

        def resumeProducing(self) -> None:
            self.events.append("resume")
            self.paused = False
            self.produce()

        def stopProducing(self) -> None:
            self.events.append("stop")
            self.paused = True

        def produce(self) -> None:
            transport = self.proto.transport
            for _ in range(1000):
                if self.paused or transport.disconnecting:
                    return
                transport.write(b"y" * 65536)

    producers: list[Producer] = []

    class Streaming(Protocol):
        def connectionMade(self) -> None:
            producer = Producer(self)
            producers.append(producer)
            self.transport.registerProducer(producer, True)
            producer.produce()

    async def scenario() -> None:
        server, address = await serve(Recording(Streaming))
        reader, writer = await client(address)
        await wait_for_async(lambda: bool(producers) and "pause" in producers[0].events, 5)
        await reader.readexactly(1 << 20)  # drain some: resumes
        await wait_for_async(lambda: "resume" in producers[0].events, 5)
        writer.transport.abort()
        await wait_for_async(lambda: not proto_mod.stats.open, 5)
        await asyncio.sleep(0)
        server.close()
        await server.wait_closed()

    run(kind, scenario)
    events = producers[0].events
    assert events[-1] == "stop", events
    assert events.count("stop") == 1
    late = Producer(Streaming())
    late.proto.transport = producers[0].proto.transport
    late.proto.transport.registerProducer(late, True)
    assert late.events == ["stop"] and late.proto.transport.producer is None


@pytest.mark.parametrize("kind", LOOPS)
def test_churn_returns_open_to_zero(kind: str) -> None:
    class Quick(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"hi")
            self.transport.loseConnection()

    async def scenario() -> int:
        before = proto_mod.stats.accepted
        server, address = await serve(Recording(Quick))
        for batch in range(20):
            conns = [await client(address) for _ in range(25)]
            for reader, writer in conns:
                assert await reader.read() == b"hi"
                if batch % 2:
                    writer.transport.abort()
                else:
                    writer.close()
        await wait_for_async(lambda: not proto_mod.stats.open, 5)
        server.close()
        await server.wait_closed()
        return proto_mod.stats.accepted - before

    assert run(kind, scenario) == 500


@pytest.mark.parametrize("kind", LOOPS)
def test_half_close_closes_unless_read_connection_lost(kind: str) -> None:
    class Plain(Protocol):
        def connectionLost(self, reason: BaseException | None = None) -> None:
            self.factory.events.append(type(reason).__name__)

    class HalfCloseable(Plain):
        def readConnectionLost(self) -> None:
            self.factory.events.append("readLost")
            self.transport.write(b"bye")
            self.transport.loseConnection()

    async def scenario(factory: Recording) -> bytes:
        server, address = await serve(factory)
        reader, writer = await client(address)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
        await wait_for_async(lambda: not proto_mod.stats.open, 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    plain = Recording(Plain)
    assert run(kind, lambda: scenario(plain)) == b""
    assert plain.events == ["ConnectionDone"]
    half = Recording(HalfCloseable)
    assert run(kind, lambda: scenario(half)) == b"bye"
    assert half.events == ["readLost", "ConnectionDone"]


@pytest.mark.parametrize("kind", LOOPS)
def test_addresses_after_close_and_ipv6(kind: str) -> None:
    seen: list[Any] = []

    class Addr(Protocol):
        def connectionLost(self, reason: BaseException | None = None) -> None:
            seen.append((self.transport.getPeer(), self.transport.getHost()))

    async def scenario(host: str, family: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol_factory(Recording(Addr)), host, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(host, port, family=family)
        await wait_for_async(lambda: len(proto_mod.stats.open) == 1, 5)
        writer.close()
        await wait_for_async(lambda: bool(seen), 5)
        server.close()
        await server.wait_closed()

    run(kind, lambda: scenario("127.0.0.1", socket.AF_INET))
    assert seen[0][0][0] == "INET" and seen[0][1][0] == "INET"
    assert seen[0][0][1] == "127.0.0.1" and isinstance(seen[0][0][2], int)
    if socket.has_ipv6:
        seen.clear()
        try:
            run(kind, lambda: scenario("::1", socket.AF_INET6))
        except OSError:
            pytest.skip("no IPv6 loopback")
        assert seen[0][0][0] == "INET6" and seen[0][0][1] == "::1"
        assert seen[0][1][0] == "INET6"


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize("abstract", [False, True])
def test_unix_addresses_path_and_abstract(kind: str, abstract: bool, tmp_path: Any) -> None:
    seen: list[Any] = []

    class Addr(Protocol):
        def connectionMade(self) -> None:
            seen.append((self.transport.getPeer(), self.transport.getHost()))

        def connectionLost(self, reason: BaseException | None = None) -> None:
            seen.append((self.transport.getPeer(), self.transport.getHost()))

    path = f"\0forkd-adv-{id(seen)}" if abstract else str(tmp_path / "s")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        server = await loop.create_unix_server(protocol_factory(Recording(Addr)), sock=sock)
        # uvloop's client side cannot connect to an abstract name: connect a plain socket.
        peer = socket.socket(socket.AF_UNIX)
        peer.connect(path)
        reader, writer = await asyncio.open_unix_connection(sock=peer)
        await wait_for_async(lambda: len(seen) == 1, 5)
        writer.close()
        await wait_for_async(lambda: len(seen) == 2, 5)
        server.close()
        await server.wait_closed()

    run(kind, scenario)
    assert seen[0] == (("UNIX", ""), ("UNIX", path))
    assert seen[1][0] == ("UNIX", "")


@pytest.mark.parametrize("kind", LOOPS)
def test_echo_to_a_peer_that_does_not_read_stays_bounded(kind: str) -> None:
    """Backpressure: with the peer not reading, the echo's write buffer pauses reading, so
    the server buffers at most a few chunks, and everything arrives once the peer reads."""
    peak = [0]

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)
            peak[0] = max(peak[0], self.transport.getWriteBufferSize())

    total = 32 << 20

    async def scenario() -> int:
        server, address = await serve(Recording(Echo))
        reader, writer = await client(address)
        chunk = b"z" * (1 << 20)

        async def send() -> None:
            for _ in range(total // len(chunk)):
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        # Not reading: the client's sends stall once both directions' buffers are full.
        await wait_for_async(lambda: writer.transport.get_write_buffer_size() > 0, 5)
        received = 0
        while received < total:
            received += len(await reader.read(1 << 20))
        await sender
        writer.close()
        await wait_for_async(lambda: not proto_mod.stats.open, 5)
        server.close()
        await server.wait_closed()
        return received

    assert run(kind, scenario) == total
    assert peak[0] < 8 << 20, peak[0]


def test_address_tuples_in_the_seeds_forms() -> None:
    assert address_tuple(("10.0.0.1", 80), socket.AF_INET) == ("INET", "10.0.0.1", 80)
    assert address_tuple(("::1", 80, 0, 0), socket.AF_INET6) == ("INET6", "::1", 80)
    assert address_tuple(b"/run/app.sock", socket.AF_UNIX) == ("UNIX", "/run/app.sock")
    assert address_tuple("", socket.AF_UNIX) == ("UNIX", "")
    # an IP socket whose peer left before it was asked must not pass for a UNIX peer,
    # which forkd.web trusts with proxy headers
    assert address_tuple(None, socket.AF_INET) == ("INET", "", 0)
    assert address_tuple(None, socket.AF_INET6) == ("INET6", "", 0)
