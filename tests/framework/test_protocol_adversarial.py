"""Adversarial tests of Protocol/Factory/Transport on real loopback sockets.

Each scenario runs under both the stdlib asyncio loop and uvloop, since the two loops differ
in exactly the corners tested here (exceptions from connection_made, writes after close).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest

from forkd import protocol as proto_mod
from forkd.protocol import Factory, Protocol, protocol_factory
from tests.loops import LOOPS, run


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for `predicate` to hold, failing after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class Recording(Factory):
    """A factory that records protocol events in order."""

    def __init__(self, protocol: type) -> None:
        self.protocol = protocol
        self.events: list[Any] = []


async def serve(factory: Factory) -> tuple[asyncio.AbstractServer, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory(factory), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


async def client(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*address)


@pytest.fixture(autouse=True)
def _clean_stats() -> Any:
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
        await until(lambda: not proto_mod.stats.open)
        await until(lambda: len(factory.events) == 1)
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
        await until(lambda: not proto_mod.stats.open)
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
        await until(lambda: not proto_mod.stats.open and factory.events)
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
        await until(lambda: len(proto_mod.stats.open) == 1)
        writer.transport.abort()
        await until(lambda: bool(outcome))
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
        await until(lambda: bool(producers) and "pause" in producers[0].events)
        await reader.readexactly(1 << 20)  # drain some: resumes
        await until(lambda: "resume" in producers[0].events)
        writer.transport.abort()
        await until(lambda: not proto_mod.stats.open)
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
        await until(lambda: not proto_mod.stats.open)
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
        await until(lambda: not proto_mod.stats.open)
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
        await until(lambda: len(proto_mod.stats.open) == 1)
        writer.close()
        await until(lambda: bool(seen))
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
        await until(lambda: len(seen) == 1)
        writer.close()
        await until(lambda: len(seen) == 2)
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
        await until(lambda: writer.transport.get_write_buffer_size() > 0)
        received = 0
        while received < total:
            received += len(await reader.read(1 << 20))
        await sender
        writer.close()
        await until(lambda: not proto_mod.stats.open)
        server.close()
        await server.wait_closed()
        return received

    assert run(kind, scenario) == total
    assert peak[0] < 8 << 20, peak[0]
