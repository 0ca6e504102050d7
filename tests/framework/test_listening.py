"""forkd.listening.Listener: a port's accepting, held back and metered by the load, on a
real listening socket on both event loops. Whether a connection was accepted is read
from the kernel's listen queue (forkd.testing.accept_queue), so a held port is seen to
leave its connections there, for the other workers."""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from forkd import listening
from forkd.listening import AcceptMode, Listener, listener_of
from forkd.ports import TCPPort
from forkd.protocol import Factory, Protocol
from forkd.testing import accept_queue, refused, wait_for_async
from tests.loops import LOOPS, run


class Counted(asyncio.Protocol):
    made = 0

    def connection_made(self, transport: Any) -> None:
        Counted.made += 1


@pytest.fixture
def counted() -> Iterator[type[Counted]]:
    Counted.made = 0
    yield Counted


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


def listener_on(sock: socket.socket) -> Listener:
    loop = asyncio.get_running_loop()

    async def start(dup: socket.socket) -> asyncio.AbstractServer:
        return await loop.create_server(Counted, sock=dup)

    return Listener(loop, sock, Counted, start)


def clients(port: int, count: int) -> list[socket.socket]:
    """Connected at once: the kernel completes the handshake, accepted or not."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


async def made(count: int) -> None:
    await wait_for_async(lambda: Counted.made == count, 5, message=f"{count} accepted")


async def queued(port: int, count: int) -> None:
    await wait_for_async(
        lambda: accept_queue(port) == count,
        5,
        message=lambda: f"{count} in the listen queue, not {accept_queue(port)}",
    )


@pytest.mark.parametrize("kind", LOOPS)
def test_hold_leaves_new_connections_in_the_kernels_queue(kind: str, counted: Any) -> None:
    async def scenario() -> None:
        sock = listening_socket()
        port = sock.getsockname()[1]
        listener = listener_on(sock)
        await listener.start()
        first = clients(port, 1)
        await made(1)
        listener.setMode("pool", AcceptMode.HOLD)
        held = clients(port, 3)
        await queued(port, 3)  # FREE would have accepted them by now: the queue stays 0
        assert Counted.made == 1
        listener.setMode("pool", AcceptMode.FREE)
        await made(4)
        await queued(port, 0)
        listener.close()
        for client in first + held:
            client.close()

    run(kind, scenario)


@pytest.mark.parametrize("kind", LOOPS)
def test_meter_accepts_one_connection_until_its_request_is_counted(
    kind: str, counted: Any, monkeypatch: Any
) -> None:
    """Out of HOLD, five connections wait in the queue: METER takes one, then the next
    only when the holder settles the last (or its grace is over), never the five at once
    as the loop's own server would."""
    monkeypatch.setattr(listening, "METER_GRACE", 30.0)

    async def scenario() -> None:
        sock = listening_socket()
        port = sock.getsockname()[1]
        listener = listener_on(sock)
        await listener.start()
        listener.setMode("pool", AcceptMode.HOLD)
        waiting = clients(port, 5)
        await queued(port, 5)
        listener.setMode("pool", AcceptMode.METER)
        await made(1)
        await queued(port, 4)
        for _ in range(20):  # it stays at one, however many iterations go by
            await asyncio.sleep(0)
        assert Counted.made == 1 and accept_queue(port) == 4
        listener.settle()
        await made(2)
        await queued(port, 3)
        listener.setMode("pool", AcceptMode.HOLD)
        listener.settle()  # held: settling accepts nothing
        listener.setMode("pool", AcceptMode.FREE)
        await made(5)
        listener.close()
        for client in waiting:
            client.close()

    run(kind, scenario)


@pytest.mark.parametrize("kind", LOOPS)
def test_meter_does_not_stall_on_a_connection_that_sends_nothing(
    kind: str, counted: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(listening, "METER_GRACE", 0.01)

    async def scenario() -> None:
        sock = listening_socket()
        port = sock.getsockname()[1]
        listener = listener_on(sock)
        await listener.start()
        listener.setMode("pool", AcceptMode.HOLD)
        waiting = clients(port, 3)
        await queued(port, 3)
        listener.setMode("pool", AcceptMode.METER)
        await made(3)  # nobody settles: each grace runs out
        listener.close()
        for client in waiting:
            client.close()

    run(kind, scenario)


@pytest.mark.parametrize("kind", LOOPS)
def test_the_strictest_holder_wins(kind: str) -> None:
    async def scenario() -> None:
        listener = listener_on(listening_socket())
        await listener.start()
        listener.setMode("a", AcceptMode.HOLD)
        listener.setMode("b", AcceptMode.METER)
        assert listener.mode is AcceptMode.HOLD
        listener.setMode("a", AcceptMode.FREE)
        assert listener.mode is AcceptMode.METER
        listener.setMode("b", AcceptMode.FREE)
        assert listener.mode is AcceptMode.FREE
        listener.close()

    run(kind, scenario)


@pytest.mark.parametrize("kind", LOOPS)
def test_held_and_freed_quickly_serves_once_and_close_closes_the_socket(
    kind: str, counted: Any
) -> None:
    """FREE starts the loop's server in a task: modes changed meanwhile are obeyed when it
    is up, and closing stops everything, the socket included (nothing listens after)."""

    async def scenario() -> None:
        sock = listening_socket()
        port = sock.getsockname()[1]
        listener = listener_on(sock)
        await listener.start()
        listener.setMode("pool", AcceptMode.HOLD)
        listener.setMode("pool", AcceptMode.FREE)  # the server starts in a task...
        listener.setMode("pool", AcceptMode.HOLD)  # ...and is held before it is up
        for _ in range(10):
            await asyncio.sleep(0)
        waiting = clients(port, 2)
        await queued(port, 2)
        listener.setMode("pool", AcceptMode.FREE)
        await made(2)
        listener.close()
        listener.setMode("pool", AcceptMode.METER)  # after close: nothing, no error
        assert sock.fileno() == -1
        assert await asyncio.get_running_loop().run_in_executor(None, refused, port)
        for client in waiting:
            client.close()

    run(kind, scenario)


class Quiet(Protocol):
    pass


class QuietFactory(Factory):
    protocol = Quiet


@pytest.mark.parametrize("kind", LOOPS)
def test_a_served_port_has_a_listener_and_pickles_without_it(kind: str) -> None:
    async def scenario() -> None:
        port = TCPPort(0, QuietFactory(), interface="127.0.0.1")
        port.startListening()
        served = await port.serve(asyncio.get_running_loop())
        assert isinstance(served, Listener) and listener_of(port) is served
        assert "listener" not in pickle.loads(pickle.dumps(port)).__dict__
        served.close()

    run(kind, scenario)
    assert listener_of(object()) is None and listener_of(None) is None


class Answer(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"ok:" + data)
        self.transport.loseConnection()


class AnswerFactory(Factory):
    protocol = Answer


@pytest.mark.parametrize("kind", LOOPS)
def test_a_connection_metered_on_a_tls_port_gets_its_handshake(
    kind: str, tmp_path: Any, monkeypatch: Any
) -> None:
    """METER accepts by itself, so it must do the port's TLS too."""
    from forkd import tls
    from tests.tlscerts import make_certificates, tls_connect

    monkeypatch.setattr(listening, "METER_GRACE", 30.0)
    certs = make_certificates(tmp_path)

    def exchange(port: int) -> bytes:
        with tls_connect(port, certs.client_context()) as sock:
            sock.sendall(b"hello")
            return sock.recv(100)

    async def scenario() -> None:
        port = TCPPort(
            0,
            AnswerFactory(),
            interface="127.0.0.1",
            contextFactory=tls.ServerContextFactory(certs.cert, certs.key),
        )
        port.startListening()
        listener = await port.serve(asyncio.get_running_loop())
        listener.setMode("pool", AcceptMode.HOLD)
        loop = asyncio.get_running_loop()
        answer = loop.run_in_executor(None, exchange, port.port)
        await queued(port.port, 1)
        listener.setMode("pool", AcceptMode.METER)
        assert await answer == b"ok:hello"
        listener.close()

    run(kind, scenario)
