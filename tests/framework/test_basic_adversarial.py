"""LineReceiver and the string receivers on a real loopback socket, under asyncio and uvloop.

The peer sends everything in one write, so mode switches and buffer clears happen with the
rest of the data already in the receiver's buffer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from forkd import protocol as proto_mod
from forkd.basic import Int16StringReceiver, LineReceiver, NetstringReceiver
from forkd.protocol import Factory, protocol_factory
from tests.loops import LOOPS, run


class Recording(Factory):
    def __init__(self, protocol: type) -> None:
        self.protocol = protocol
        self.events: list[Any] = []


async def exchange(factory: Factory, payload: bytes, half_close: bool = True) -> bytes:
    """Send `payload` in one write, then read the reply until the server closes."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory(factory), "127.0.0.1", 0)
    address = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(*address)
    writer.write(payload)
    if half_close:
        writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    deadline = loop.time() + 5
    while proto_mod.stats.open and loop.time() < deadline:
        await asyncio.sleep(0.005)
    server.close()
    await server.wait_closed()
    return reply


@pytest.fixture(autouse=True)
def _clean_stats() -> Any:
    proto_mod.stats.open.clear()
    yield
    assert not proto_mod.stats.open, "a connection was never lost"


class Switcher(LineReceiver):
    """Line mode for a header, raw for N bytes, then back to lines."""

    def connectionMade(self) -> None:
        self.raw = b""
        self.expected = 0

    def lineReceived(self, line: bytes) -> None:
        self.factory.events.append(("line", line))
        if line.startswith(b"RAW "):
            self.expected = int(line[4:])
            self.setRawMode()
        elif line == b"QUIT":
            self.transport.write(repr(self.factory.events).encode())
            self.transport.loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        need = self.expected - len(self.raw)
        self.raw += data[:need]
        if len(self.raw) == self.expected:
            self.factory.events.append(("raw", self.raw))
            self.raw = b""
            self.setLineMode(data[need:])


@pytest.mark.parametrize("kind", LOOPS)
def test_raw_mode_switch_with_everything_in_one_chunk(kind: str) -> None:
    factory = Recording(Switcher)
    payload = b"a\r\nRAW 5\r\n12\r\n4b\r\nRAW 0\r\n" + b"RAW 3\r\nxyzc\r\nQUIT\r\nnever\r\n"
    run(kind, lambda: exchange(factory, payload))
    # Nothing after QUIT is delivered: the protocol is disconnecting.
    assert factory.events == [
        ("line", b"a"),
        ("line", b"RAW 5"),
        ("raw", b"12\r\n4"),
        ("line", b"b"),
        ("line", b"RAW 0"),
        ("raw", b""),
        ("line", b"RAW 3"),
        ("raw", b"xyz"),
        ("line", b"c"),
        ("line", b"QUIT"),
    ]


class Clearer(LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        if line == b"CLEAR":
            rest = self.clearLineBuffer()
            self.transport.write(b"cleared:" + rest + b"|")
        else:
            self.transport.write(b"line:" + line + b"|")

    def connectionLost(self, reason: BaseException | None = None) -> None:
        self.factory.events.append(type(reason).__name__)


@pytest.mark.parametrize("kind", LOOPS)
def test_clear_line_buffer_from_line_received(kind: str) -> None:
    factory = Recording(Clearer)
    reply = run(kind, lambda: exchange(factory, b"one\r\nCLEAR\r\ntwo\r\nthr"))
    assert reply == b"line:one|cleared:two\r\nthr|"
    assert factory.events == ["ConnectionDone"]


class Raising(LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        if line == b"boom":
            raise ValueError("boom in lineReceived")
        self.sendLine(line)

    def connectionLost(self, reason: BaseException | None = None) -> None:
        self.factory.events.append(type(reason).__name__)


@pytest.mark.parametrize("kind", LOOPS)
def test_exception_in_line_received_closes_the_connection(kind: str) -> None:
    factory = Recording(Raising)
    reply = run(kind, lambda: exchange(factory, b"a\r\nboom\r\nb\r\n", half_close=False))
    assert reply == b"a\r\n"
    assert factory.events == ["ConnectionLost"]


class TooLong(LineReceiver):
    MAX_LENGTH = 10

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)


@pytest.mark.parametrize("kind", LOOPS)
def test_overlong_line_closes_after_earlier_lines_are_answered(kind: str) -> None:
    reply = run(kind, lambda: exchange(Recording(TooLong), b"ok\r\n" + b"x" * 50 + b"\r\nno\r\n"))
    assert reply == b"ok\r\n"


class Strings(Int16StringReceiver):
    def stringReceived(self, string: bytes) -> None:
        self.sendString(string[::-1])
        if string == b"bye":
            self.transport.loseConnection()


class Net(NetstringReceiver):
    def stringReceived(self, string: bytes) -> None:
        self.sendString(string.upper())


@pytest.mark.parametrize("kind", LOOPS)
def test_string_receivers_in_one_chunk(kind: str) -> None:
    payload = b"\x00\x03abc\x00\x00\x00\x03bye\x00\x02zz"
    assert run(kind, lambda: exchange(Recording(Strings), payload)) == (
        b"\x00\x03cba\x00\x00\x00\x03eyb"
    )
    net = run(kind, lambda: exchange(Recording(Net), b"3:abc,0:,2:xy,x:"))
    assert net == b"3:ABC,0:,2:XY,"
