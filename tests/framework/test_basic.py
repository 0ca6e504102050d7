"""Tests for forkd.basic: Twisted's own test vectors for its framing receivers, fed in
every chunk size from one byte up to the whole stream, plus re-entrancy cases, the receivers
on a real loopback socket, and property tests on arbitrary streams.

On a real socket the peer sends everything in one write, so mode switches and buffer clears
happen with the rest of the data already in the receiver's buffer; each case runs under both
asyncio and uvloop.

The property tests check each receiver against a small model of its wire format: what it
delivers, and whether it closes the connection, must not depend on how the stream was
chunked, and whatever a receiver sends must come back unchanged.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkd import basic
from forkd import protocol as proto_mod
from forkd.protocol import Factory, protocol_factory
from forkd.testing import Clock, StringTransport, wait_for_async
from tests.loops import LOOPS, run


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """`data` in pieces of `size` bytes, then one empty piece.

    The trailing empty call matches Twisted's test loop; it matters for data re-fed from
    lineLengthExceeded, which (as in Twisted) waits for the next dataReceived.
    """
    for start in range(0, len(data), size):
        yield data[start : start + size]
    yield b""


def sizes(data: bytes) -> range:
    """Every chunk size from one byte up to the whole stream."""
    return range(1, len(data) + 1)


def feed(protocol: Any, data: bytes, size: int) -> None:
    for piece in chunks(data, size):
        protocol.dataReceived(piece)


def feed_until_closed(protocol: Any, data: bytes, size: int) -> None:
    """Feed like a real transport, which stops reading once loseConnection is called."""
    for piece in chunks(data, size):
        if protocol.transport.disconnecting:
            return
        protocol.dataReceived(piece)


# -- LineReceiver ---------------------------------------------------------------------


class LineTester(basic.LineReceiver):
    """Twisted's LineTester: acts on some lines (pause, rawpause, stop, len N, ...)."""

    delimiter = b"\n"
    MAX_LENGTH = 64

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock

    def connectionMade(self) -> None:
        self.received: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.received.append(line)
        if line == b"":
            self.setRawMode()
        elif line == b"pause":
            self.pauseProducing()
            assert self.clock is not None
            self.clock.callLater(0, self.resumeProducing)
        elif line == b"rawpause":
            self.pauseProducing()
            self.setRawMode()
            self.received.append(b"")
            assert self.clock is not None
            self.clock.callLater(0, self.resumeProducing)
        elif line == b"stop":
            self.stopProducing()
        elif line[:4] == b"len ":
            self.length = int(line[4:])
        elif line.startswith(b"produce"):
            self.transport.registerProducer(self, False)
        elif line.startswith(b"unproduce"):
            self.transport.unregisterProducer()

    def rawDataReceived(self, data: bytes) -> None:
        data, rest = data[: self.length], data[self.length :]
        self.length = self.length - len(data)
        self.received[-1] = self.received[-1] + data
        if self.length == 0:
            self.setLineMode(rest)

    def lineLengthExceeded(self, line: bytes) -> None:
        if len(line) > self.MAX_LENGTH + 1:
            self.setLineMode(line[self.MAX_LENGTH + 1 :])


class FlippingLineTester(basic.LineReceiver):
    """Flips between line and raw mode after each byte."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        self.setLineMode(data[1:])


class Collector(basic.LineReceiver):
    """Records lines; `action` (if set) runs after each one."""

    def __init__(self, action: Callable[[Collector, bytes], Any] | None = None) -> None:
        self.lines: list[bytes] = []
        self.raw: list[bytes] = []
        self.action = action

    def lineReceived(self, line: bytes) -> Any:
        self.lines.append(line)
        if self.action is not None:
            return self.action(self, line)
        return None

    def rawDataReceived(self, data: bytes) -> None:
        self.raw.append(data)


def connected(protocol: Any, transport: Any = None) -> Any:
    protocol.makeConnection(transport if transport is not None else StringTransport())
    return protocol


LINE_BUFFER = b"""\
len 10

0123456789len 5

1234
len 20
foo 123

0123456789
012345678len 0
foo 5

1234567890123456789012345678901234567890123456789012345678901234567890
len 1

a"""

LINE_OUTPUT = [
    b"len 10",
    b"0123456789",
    b"len 5",
    b"1234\n",
    b"len 20",
    b"foo 123",
    b"0123456789\n012345678",
    b"len 0",
    b"foo 5",
    b"",
    b"67890",
    b"len 1",
    b"a",
]


@pytest.mark.parametrize("size", sizes(LINE_BUFFER))
def test_line_buffer(size: int) -> None:
    protocol = connected(LineTester())
    feed(protocol, LINE_BUFFER, size)
    assert protocol.received == LINE_OUTPUT


PAUSE_BUF = b"twiddle1\ntwiddle2\npause\ntwiddle3\n"


@pytest.mark.parametrize("size", sizes(PAUSE_BUF))
def test_pausing(size: int) -> None:
    clock = Clock()
    transport = StringTransport()
    protocol = connected(LineTester(clock), transport)
    feed(protocol, PAUSE_BUF, size)
    assert protocol.received == [b"twiddle1", b"twiddle2", b"pause"]
    assert protocol.paused and transport.producerState == "paused"
    clock.advance(0)
    assert protocol.received == [b"twiddle1", b"twiddle2", b"pause", b"twiddle3"]
    assert not protocol.paused and transport.producerState == "producing"


RAWPAUSE_BUF = b"twiddle1\ntwiddle2\nlen 5\nrawpause\n12345twiddle3\n"


@pytest.mark.parametrize("size", sizes(RAWPAUSE_BUF))
def test_raw_pausing(size: int) -> None:
    clock = Clock()
    protocol = connected(LineTester(clock))
    feed(protocol, RAWPAUSE_BUF, size)
    assert protocol.received == [b"twiddle1", b"twiddle2", b"len 5", b"rawpause", b""]
    clock.advance(0)
    assert protocol.received == [
        b"twiddle1",
        b"twiddle2",
        b"len 5",
        b"rawpause",
        b"12345",
        b"twiddle3",
    ]


STOP_BUF = b"twiddle1\ntwiddle2\nstop\nmore\nstuff\n"


@pytest.mark.parametrize("size", sizes(STOP_BUF))
def test_stop_producing(size: int) -> None:
    transport = StringTransport()
    protocol = connected(LineTester(), transport)
    feed(protocol, STOP_BUF, size)
    assert protocol.received == [b"twiddle1", b"twiddle2", b"stop"]
    assert transport.producerState == "stopped"


def test_line_receiver_as_producer() -> None:
    transport = StringTransport()
    protocol = connected(LineTester(), transport)
    protocol.dataReceived(b"produce\nhello world\nunproduce\ngoodbye\n")
    assert protocol.received == [b"produce", b"hello world", b"unproduce", b"goodbye"]
    assert transport.producer is None


def test_clear_line_buffer() -> None:
    class ClearingReceiver(basic.LineReceiver):
        def lineReceived(self, line: bytes) -> None:
            self.line = line
            self.rest = self.clearLineBuffer()

    protocol = ClearingReceiver()
    protocol.dataReceived(b"foo\r\nbar\r\nbaz")
    assert (protocol.line, protocol.rest) == (b"foo", b"bar\r\nbaz")
    protocol.dataReceived(b"quux\r\n")
    assert (protocol.line, protocol.rest) == (b"quux", b"")


def test_clear_line_buffer_outside_callback() -> None:
    protocol = connected(Collector())
    protocol.dataReceived(b"a\r\npartial")
    assert protocol.clearLineBuffer() == b"partial"
    protocol.dataReceived(b"b\r\n")
    assert protocol.lines == [b"a", b"b"]


def test_clear_line_buffer_includes_data_received_meanwhile() -> None:
    def action(protocol: Collector, line: bytes) -> None:
        if line == b"one":
            protocol.dataReceived(b"three\r\n")
            protocol.cleared = protocol.clearLineBuffer()  # type: ignore[attr-defined]
            protocol.dataReceived(b"four\r\n")

    protocol = connected(Collector(action))
    protocol.dataReceived(b"one\r\ntwo\r\nx")
    assert protocol.cleared == b"two\r\nxthree\r\n"
    assert protocol.lines == [b"one", b"four"]


def test_stack_recursion() -> None:
    protocol = connected(FlippingLineTester())
    limit = sys.getrecursionlimit()
    protocol.dataReceived(b"x\nx" * limit)
    assert b"".join(protocol.lines) == b"x" * limit


def test_maximum_line_length() -> None:
    transport = StringTransport()
    protocol = connected(basic.LineReceiver(), transport)
    protocol.dataReceived(b"x" * (protocol.MAX_LENGTH + 1) + b"\r\nr")
    assert transport.disconnecting


def test_line_of_exactly_maximum_length_is_delivered() -> None:
    transport = StringTransport()
    protocol = connected(Collector(), transport)
    line = b"x" * protocol.MAX_LENGTH
    for size in (1, 1000, len(line) + 2):
        feed(protocol, line + b"\r\n", size)
    assert protocol.lines == [line] * 3
    assert not transport.disconnecting


def test_maximum_line_length_partial_delimiter() -> None:
    transport = StringTransport()
    protocol = connected(LineTester(), transport)
    protocol.MAX_LENGTH = 4
    line = b"x" * (protocol.MAX_LENGTH - 1)
    protocol.dataReceived(line)
    protocol.dataReceived(protocol.delimiter[:-1])
    protocol.dataReceived(protocol.delimiter[-1:] + line)
    assert not transport.disconnecting
    assert protocol.received == [line]


def test_not_quite_maximum_line_length_unfinished() -> None:
    transport = StringTransport()
    protocol = connected(basic.LineReceiver(), transport)
    protocol.dataReceived(b"x" * protocol.MAX_LENGTH + protocol.delimiter[:-1])
    assert not transport.disconnecting


def test_maximum_line_length_remaining() -> None:
    transport = StringTransport()
    protocol = connected(basic.LineReceiver(), transport)
    protocol.dataReceived(b"x" * (protocol.MAX_LENGTH + len(protocol.delimiter)))
    assert transport.disconnecting


def test_raw_data_error() -> None:
    protocol = connected(basic.LineReceiver())
    protocol.rawDataReceived = lambda data: RuntimeError("oops")
    protocol.setRawMode()
    assert isinstance(protocol.dataReceived(b"data"), RuntimeError)


def test_line_received_returning_true_stops_delivery() -> None:
    protocol = connected(Collector(lambda p, line: "stop" if line == b"b" else None))
    assert protocol.dataReceived(b"a\r\nb\r\nc\r\n") == "stop"
    assert protocol.lines == [b"a", b"b"]
    protocol.dataReceived(b"")
    assert protocol.lines == [b"a", b"b", b"c"]


def test_not_implemented_hooks() -> None:
    with pytest.raises(NotImplementedError):
        basic.LineReceiver().rawDataReceived(b"foo")
    with pytest.raises(NotImplementedError):
        basic.LineReceiver().lineReceived(b"foo")


class ExcessivelyLargeLineCatcher(basic.LineReceiver):
    MAX_LENGTH = 6

    def connectionMade(self) -> None:
        self.longLines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        pass

    def lineLengthExceeded(self, line: bytes) -> None:
        self.longLines.append(line)


EXCESSIVE = b"x" * (ExcessivelyLargeLineCatcher.MAX_LENGTH * 2 + 2)


@pytest.mark.parametrize(
    "data, expected",
    [
        (EXCESSIVE, EXCESSIVE),  # long unended line
        (b"x\r\n" + EXCESSIVE, EXCESSIVE),  # long line after a short one
        (EXCESSIVE + b"\r\n" + EXCESSIVE, EXCESSIVE + b"\r\n" + EXCESSIVE),  # with delimiter
        ((EXCESSIVE + b"\r\n") * 2, (EXCESSIVE + b"\r\n") * 2),  # several long lines
    ],
)
def test_line_length_exceeded_gets_rest_of_buffer(data: bytes, expected: bytes) -> None:
    protocol = connected(ExcessivelyLargeLineCatcher())
    protocol.dataReceived(data)
    assert protocol.longLines == [expected]


def test_line_length_exceeded_in_chunks_gets_only_the_long_line_start() -> None:
    protocol = connected(ExcessivelyLargeLineCatcher())
    feed(protocol, b"ok\r\n" + EXCESSIVE, 1)
    limit = protocol.MAX_LENGTH + len(protocol.delimiter)
    assert protocol.longLines == [b"x" * limit]


class OnlyProducerTransport:
    """Twisted's minimal transport that records pause state and writes."""

    paused = False
    disconnecting = False

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        self.data.append(data)


class ConsumingProtocol(basic.LineReceiver):
    """Writes each line and then pauses itself."""

    def lineReceived(self, line: bytes) -> None:
        self.transport.write(line)
        self.pauseProducing()


def test_pause_resume() -> None:
    protocol = ConsumingProtocol()
    transport = OnlyProducerTransport()
    protocol.makeConnection(transport)

    def state() -> tuple[list[bytes], bool, bool]:
        return transport.data, transport.paused, protocol.paused

    protocol.dataReceived(b"hello, ")
    assert state() == ([], False, False)
    protocol.dataReceived(b"world\r\n")
    assert state() == ([b"hello, world"], True, True)
    protocol.resumeProducing()
    assert state() == ([b"hello, world"], False, False)
    protocol.dataReceived(b"hello\r\nworld\r\n")
    assert state() == ([b"hello, world", b"hello"], True, True)
    protocol.resumeProducing()
    assert state() == ([b"hello, world", b"hello", b"world"], True, True)
    protocol.dataReceived(b"goodbye\r\n")
    assert state() == ([b"hello, world", b"hello", b"world"], True, True)
    protocol.resumeProducing()
    assert state() == ([b"hello, world", b"hello", b"world", b"goodbye"], True, True)
    protocol.resumeProducing()
    assert state() == ([b"hello, world", b"hello", b"world", b"goodbye"], False, False)


# Re-entrancy beyond Twisted's own vectors, each in every chunking.

DISCONNECT_BUF = b"one\r\nquit\r\nafter\r\nmore\r\n"


@pytest.mark.parametrize("size", sizes(DISCONNECT_BUF))
def test_lose_connection_in_line_received_stops_delivery(size: int) -> None:
    transport = StringTransport()

    def action(protocol: Collector, line: bytes) -> None:
        if line == b"quit":
            protocol.transport.loseConnection()

    protocol = connected(Collector(action), transport)
    feed_until_closed(protocol, DISCONNECT_BUF, size)
    assert protocol.lines == [b"one", b"quit"]
    assert transport.disconnecting


RAW_SWITCH_BUF = b"one\r\nraw\r\nafter\r\nmore"


@pytest.mark.parametrize("size", sizes(RAW_SWITCH_BUF))
def test_set_raw_mode_in_line_received_passes_rest_raw(size: int) -> None:
    def action(protocol: Collector, line: bytes) -> None:
        if line == b"raw":
            protocol.setRawMode()

    protocol = connected(Collector(action))
    feed(protocol, RAW_SWITCH_BUF, size)
    assert protocol.lines == [b"one", b"raw"]
    assert b"".join(protocol.raw) == b"after\r\nmore"


DELIMITER_SWITCH_BUF = b"a\r\nswitch\r\nb\nc\r\nd\n"


@pytest.mark.parametrize("size", sizes(DELIMITER_SWITCH_BUF))
def test_delimiter_change_in_line_received_applies_to_rest(size: int) -> None:
    def action(protocol: Collector, line: bytes) -> None:
        if line == b"switch":
            protocol.delimiter = b"\n"

    protocol = connected(Collector(action))
    feed(protocol, DELIMITER_SWITCH_BUF, size)
    assert protocol.lines == [b"a", b"switch", b"b", b"c\r", b"d"]


def test_delimiter_change_between_calls_applies_to_buffered_data() -> None:
    protocol = connected(Collector())
    protocol.dataReceived(b"one\ntwo")
    protocol.delimiter = b"\n"
    protocol.dataReceived(b"")
    assert protocol.lines == [b"one"]


def test_raw_data_handed_back_to_line_mode_is_searched_afresh() -> None:
    class HandBack(Collector):
        def rawDataReceived(self, data: bytes) -> None:
            self.raw.append(data)
            self.setLineMode(b"a\r\nb")

    protocol = connected(HandBack())
    protocol.dataReceived(b"partial line")
    protocol.setRawMode()
    protocol.dataReceived(b"!")
    assert protocol.raw == [b"partial line!"]
    assert protocol.lines == [b"a"]


@pytest.mark.parametrize("tail, fed", [(b"ab", b"\r\nc"), (b"ab\r", b"\nc")])
def test_data_fed_from_line_received_completes_the_partial_line(tail: bytes, fed: bytes) -> None:
    def action(protocol: Collector, line: bytes) -> None:
        if line == b"x":
            protocol.dataReceived(fed)

    protocol = connected(Collector(action))
    protocol.dataReceived(b"x\r\n" + tail)
    assert protocol.lines == [b"x", b"ab"]
    protocol.dataReceived(b"\r\n")
    assert protocol.lines == [b"x", b"ab", b"c"]


def test_exception_in_line_received_keeps_remaining_lines() -> None:
    def action(protocol: Collector, line: bytes) -> None:
        if line == b"boom":
            raise ValueError(line)

    protocol = connected(Collector(action))
    with pytest.raises(ValueError):
        protocol.dataReceived(b"a\r\nboom\r\nb\r\nc")
    protocol.dataReceived(b"\r\n")
    assert protocol.lines == [b"a", b"boom", b"b", b"c"]


def test_set_line_mode_with_extra_from_outside_callbacks() -> None:
    protocol = connected(Collector())
    protocol.setRawMode()
    protocol.dataReceived(b"raw bytes")
    protocol.setLineMode(b"x\r\ny\r\n")
    assert protocol.raw == [b"raw bytes"]
    assert protocol.lines == [b"x", b"y"]


def test_send_line_and_defaults() -> None:
    transport = StringTransport()
    protocol = connected(basic.LineReceiver(), transport)
    protocol.sendLine(b"hello")
    assert transport.value() == b"hello\r\n"
    assert (protocol.delimiter, protocol.MAX_LENGTH) == (b"\r\n", 16384)
    with pytest.raises(TypeError):
        protocol.sendLine("text")


def test_data_received_is_the_event_loop_entry_point() -> None:
    class Subclass(Collector):
        pass

    protocol = connected(Subclass())
    protocol.data_received(b"via\r\nasyncio\r\n")
    assert protocol.lines == [b"via", b"asyncio"]


# -- NetstringReceiver ----------------------------------------------------------------


class TestNetstring(basic.NetstringReceiver):
    MAX_LENGTH = 50

    def connectionMade(self) -> None:
        self.received: list[bytes] = []

    def stringReceived(self, string: bytes) -> None:
        self.received.append(string)
        self.transport.write(string)


NETSTRINGS = [b"hello", b"world", b"how", b"are", b"you123", b":today", b"a" * 515]


def netstring_stream(strings: list[bytes]) -> bytes:
    transport = StringTransport()
    sender = connected(basic.NetstringReceiver(), transport)
    for string in strings:
        sender.sendString(string)
    return transport.value()


NETSTRING_STREAM = netstring_stream(NETSTRINGS)


def test_netstring_send_format() -> None:
    assert netstring_stream([b"", b"a", b"hello, world"]) == b"0:,1:a,12:hello, world,"


@pytest.mark.parametrize("size", sizes(NETSTRING_STREAM))
def test_netstring_buffer(size: int) -> None:
    transport = StringTransport()
    protocol = connected(TestNetstring(), transport)
    protocol.MAX_LENGTH = 699
    feed(protocol, NETSTRING_STREAM, size)
    assert protocol.received == NETSTRINGS
    assert not transport.disconnecting


ILLEGAL_NETSTRINGS = [
    b"9999999999999999999999",
    b"abc",
    b"4:abcde",
    b"51:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab,",
    b"2:aaa,",  # more data than specified
    b"0:a,",  # more data than specified, border case
    b":aaa,",  # missing number
    b"3aaa,",  # missing colon
    b"aaa,",  # missing number and colon
    b"aaa",  # only data
    b"01:a,",  # leading zero
    b"00:,",
    b"+1:a,",  # sign
    b"-1:a,",
    b" 1:a,",  # whitespace
    b"1 :a,",
    b"1:a ,",
    b"1:a,\n",  # whitespace between netstrings
    b"1\n",
    b"1:a,1:b;",  # wrong terminator after a good netstring
    b"\xd9\xa1:a,",  # a non-ASCII digit
    b"51",  # over MAX_LENGTH (50) before the colon arrives
]


@pytest.mark.parametrize("data", ILLEGAL_NETSTRINGS)
def test_netstring_illegal(data: bytes) -> None:
    for size in sizes(data):
        transport = StringTransport()
        protocol = connected(TestNetstring(), transport)
        feed(protocol, data, size)
        assert transport.disconnecting, (data, size)
        assert protocol.brokenPeer == 1
        delivered = list(protocol.received)
        protocol.dataReceived(b"1:a,")  # nothing is delivered after an error
        assert protocol.received == delivered


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"0:,", [b""]),
        (b"1:a,", [b"a"]),
        (b"2:ab,", [b"ab"]),
        (b"4:1:a,,", [b"1:a,"]),  # nested netstring
        (b"50:" + b"x" * 50 + b",", [b"x" * 50]),  # exactly MAX_LENGTH
        (b"3:a\r\n,0:,", [b"a\r\n", b""]),
    ],
)
def test_netstring_legal(data: bytes, expected: list[bytes]) -> None:
    for size in sizes(data):
        transport = StringTransport()
        protocol = connected(TestNetstring(), transport)
        feed(protocol, data, size)
        assert protocol.received == expected
        assert not transport.disconnecting


def test_netstring_portions() -> None:
    protocol = connected(TestNetstring())
    for part in [b"1", b"0:01234", b"56789", b","]:
        protocol.dataReceived(part)
    assert protocol.received == [b"0123456789"]
    protocol.dataReceived(b"1:a,1")
    assert protocol.received == [b"0123456789", b"a"]
    protocol.dataReceived(b":b,")
    assert protocol.received == [b"0123456789", b"a", b"b"]


def test_netstring_max_receive_limit() -> None:
    transport = StringTransport()
    protocol = connected(TestNetstring(), transport)
    too_long = protocol.MAX_LENGTH + 1
    protocol.dataReceived(b"%d:" % too_long + b"a" * too_long)
    assert transport.disconnecting
    assert protocol.received == []


def test_netstring_default_max_length() -> None:
    protocol = connected(basic.NetstringReceiver())
    protocol.stringReceived = lambda string: None
    protocol.dataReceived(b"99999:")
    assert not protocol.transport.disconnecting
    protocol = connected(basic.NetstringReceiver())
    protocol.dataReceived(b"100000")
    assert protocol.transport.disconnecting


def test_netstring_reentrant_data() -> None:
    class Reentrant(TestNetstring):
        depth = 0

        def stringReceived(self, string: bytes) -> None:
            # Data fed from a callback is parsed after the callback returns, never nested.
            self.depth += 1
            super().stringReceived(string + b"@%d" % self.depth)
            if string == b"first":
                self.dataReceived(b"5:third,")
            self.depth -= 1

    protocol = connected(Reentrant())
    protocol.dataReceived(b"5:first,6:second,")
    assert protocol.received == [b"first@1", b"second@1", b"third@1"]


def test_netstring_string_received_not_implemented() -> None:
    with pytest.raises(NotImplementedError):
        basic.NetstringReceiver().stringReceived(b"foo")


# -- IntNStringReceiver ---------------------------------------------------------------


def recording(base: type[basic.IntNStringReceiver]) -> type[basic.IntNStringReceiver]:
    """A subclass of `base` that records strings (Twisted's TestMixin), MAX_LENGTH 50."""

    class Recorder(base):  # type: ignore[valid-type, misc]
        MAX_LENGTH = 50

        def connectionMade(self) -> None:
            self.received: list[bytes] = []

        def stringReceived(self, string: bytes) -> None:
            self.received.append(string)

    return Recorder


# Twisted's vectors: (class, an illegal stream, streams that deliver nothing).
INT_RECEIVERS = {
    "int32": (
        basic.Int32StringReceiver,
        b"\x10\x00\x00\x00aaaaaa",
        [b"\x00\x00\x00", b"hello there", b""],
    ),
    "int16": (basic.Int16StringReceiver, b"\x10\x00aaaaaa", [b"\x00", b"hello there", b""]),
    "int8": (basic.Int8StringReceiver, b"\x00\x00aaaaaa", [b"\x08", b"dzadz", b""]),
}


@pytest.fixture(params=sorted(INT_RECEIVERS))
def intn(request: pytest.FixtureRequest) -> Any:
    base, illegal, partial = INT_RECEIVERS[request.param]
    return base, illegal, partial


def message(protocol: Any, data: bytes) -> bytes:
    return struct.pack(protocol.structFormat, len(data)) + data


def test_intn_formats() -> None:
    assert [
        (cls.structFormat, cls.prefixLength, cls.MAX_LENGTH)
        for cls in (
            basic.Int32StringReceiver,
            basic.Int16StringReceiver,
            basic.Int8StringReceiver,
        )
    ] == [("!I", 4, 99999), ("!H", 2, 99999), ("!B", 1, 99999)]


def test_intn_receive_every_chunking(intn: Any) -> None:
    base, _, _ = intn
    strings = [b"a", b"b" * 16, b"", b"c" * 50]
    stream = b"".join(message(base, s) for s in strings)
    for size in sizes(stream):
        protocol = connected(recording(base)())
        feed(protocol, stream, size)
        assert protocol.received == strings


def test_intn_partial(intn: Any) -> None:
    base, _, partial = intn
    for data in partial:
        protocol = connected(recording(base)())
        feed(protocol, data, 1)
        assert protocol.received == []


def test_intn_illegal(intn: Any) -> None:
    base, illegal, _ = intn
    for size in sizes(illegal):
        transport = StringTransport()
        protocol = connected(recording(base)(), transport)
        feed(protocol, illegal, size)
        assert transport.disconnecting


def test_intn_send_and_data(intn: Any) -> None:
    base, _, _ = intn
    transport = StringTransport()
    protocol = connected(recording(base)(), transport)
    protocol.sendString(b"b" * 16)
    protocol.sendString(b"foo")
    prefix = {1: b"\x03", 2: b"\x00\x03", 4: b"\x00\x00\x00\x03"}[base.prefixLength]
    assert transport.value() == message(base, b"b" * 16) + prefix + b"foo"
    protocol.dataReceived(prefix[:-1] + b"\x04ubar")
    assert protocol.received == [b"ubar"]


@pytest.mark.parametrize("base", [basic.Int16StringReceiver, basic.Int8StringReceiver])
def test_intn_too_long_send(base: type[basic.IntNStringReceiver]) -> None:
    transport = StringTransport()
    protocol = connected(recording(base)(), transport)
    limit = 2 ** (base.prefixLength * 8)
    with pytest.raises(basic.StringTooLongError):
        protocol.sendString(b"b" * limit)
    assert issubclass(basic.StringTooLongError, AssertionError)
    assert transport.value() == b""
    protocol.sendString(b"b" * (limit - 1))
    assert transport.value() == message(base, b"b" * (limit - 1))


def test_intn_length_limit_exceeded(intn: Any) -> None:
    base, _, _ = intn
    protocol = connected(recording(base)())
    lengths: list[int] = []
    protocol.lengthLimitExceeded = lengths.append
    protocol.MAX_LENGTH = 10
    protocol.dataReceived(struct.pack(base.structFormat, 11))
    assert lengths == [11]


def test_intn_long_string_not_delivered(intn: Any) -> None:
    base, _, _ = intn
    transport = StringTransport()
    protocol = connected(recording(base)(), transport)
    protocol.MAX_LENGTH = 10
    stream = message(base, b"ok") + message(base, b"x" * 11) + message(base, b"later")
    feed(protocol, stream, len(stream))
    protocol.dataReceived(b"")
    assert protocol.received == [b"ok"]
    assert transport.disconnecting


def test_intn_recvd_contains_remaining_data(intn: Any) -> None:
    base, _, _ = intn
    protocol = connected(recording(base)())
    result: list[bytes] = []
    protocol.stringReceived = lambda string: result.append(protocol.recvd)
    incomplete = struct.pack(base.structFormat, 5) + b"b" * 4
    protocol.dataReceived(message(base, b"a" * 5) + incomplete)
    assert result == [incomplete]
    assert protocol.recvd == incomplete


def test_intn_recvd_changed(intn: Any) -> None:
    base, _, _ = intn
    protocol = connected(recording(base)())
    result: list[bytes] = []

    def stringReceived(string: bytes) -> None:
        if not result:
            protocol.recvd = message(base, b"c" * 5)
        result.append(string)

    protocol.stringReceived = stringReceived
    protocol.dataReceived(message(base, b"a" * 5) + message(base, b"b" * 5))
    assert result == [b"a" * 5, b"c" * 5]


def test_intn_switching(intn: Any) -> None:
    base, _, _ = intn
    protocol = connected(recording(base)())
    switch = b"\x00\x00\x00\x00"
    strings = [b"a", b"b" * 16]
    result: list[bytes] = []

    def stringReceived(string: bytes) -> None:
        result.append(string)
        protocol.recvd = protocol.recvd[len(switch) :]

    protocol.stringReceived = stringReceived
    protocol.dataReceived(b"".join(message(base, s) + switch for s in strings))
    protocol.dataReceived(b"\x01")
    assert result == strings
    assert protocol.recvd == b"\x01"


def test_intn_recvd_in_length_limit_exceeded(intn: Any) -> None:
    base, _, _ = intn
    protocol = connected(recording(base)())
    data = b"too long"
    protocol.MAX_LENGTH = len(data) - 1
    result: list[Any] = []

    def lengthLimitExceeded(length: int) -> None:
        result.extend([length, protocol.recvd])

    protocol.lengthLimitExceeded = lengthLimitExceeded
    protocol.dataReceived(message(base, b"ok") + message(base, data))
    assert result == [len(data), message(base, data)]
    assert protocol.received == [b"ok"]
    protocol.dataReceived(b"")  # the string already delivered is not delivered again
    assert protocol.received == [b"ok"]


def test_intn_pause_resume(intn: Any) -> None:
    base, _, _ = intn
    transport = StringTransport()
    protocol = connected(recording(base)(), transport)

    def stringReceived(string: bytes) -> None:
        protocol.received.append(string)
        protocol.pauseProducing()

    protocol.stringReceived = stringReceived
    protocol.dataReceived(message(base, b"one") + message(base, b"two"))
    assert protocol.received == [b"one"]
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert protocol.received == [b"one", b"two"]
    protocol.resumeProducing()
    assert transport.producerState == "producing"


def test_intn_reentrant_data(intn: Any) -> None:
    base, _, _ = intn
    protocol = connected(recording(base)())
    depth = [0]

    def stringReceived(string: bytes) -> None:
        # Data fed from a callback is parsed after the callback returns, never nested.
        depth[0] += 1
        protocol.received.append((string, depth[0]))
        if string == b"first":
            protocol.dataReceived(message(base, b"third"))
        depth[0] -= 1

    protocol.stringReceived = stringReceived
    protocol.dataReceived(message(base, b"first") + message(base, b"second"))
    assert protocol.received == [(b"first", 1), (b"second", 1), (b"third", 1)]
    assert protocol.recvd == b""


def test_intn_string_received_not_implemented() -> None:
    with pytest.raises(NotImplementedError):
        basic.IntNStringReceiver().stringReceived(b"foo")


# -- on a real loopback socket, under asyncio and uvloop ------------------------------


class Echo(basic.LineReceiver):
    MAX_LENGTH = 100

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)


async def echo_session(pieces: list[bytes], expect: int) -> bytes:
    """Serve Echo on a free port, send `pieces` one by one, read `expect` bytes or EOF."""
    factory = Factory()
    factory.protocol = Echo
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory(factory), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )  # so the pieces tend to reach the server as they were written
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        received = b""
        while len(received) < expect:
            chunk = await asyncio.wait_for(reader.read(65536), timeout=5)
            if not chunk:
                break
            received += chunk
        writer.close()
        return received
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("kind", LOOPS)
def test_echo_over_a_real_socket(kind: str) -> None:
    pieces = [b"hel", b"lo\r", b"\nwor", b"ld\r\n\r", b"\n", b"a\r\nb\r\nc\r\n", b"x" * 100]
    pieces.append(b"\r\nlast\r\n")
    expected = b"hello\r\nworld\r\n\r\na\r\nb\r\nc\r\n" + b"x" * 100 + b"\r\nlast\r\n"
    assert run(kind, lambda: echo_session(pieces, len(expected))) == expected


@pytest.mark.parametrize("kind", LOOPS)
def test_overlong_line_closes_a_real_connection(kind: str) -> None:
    # The long line comes last: the server reads everything before it closes, so the
    # client gets a FIN (and the echoed line), not a reset.
    pieces = [b"ok\r\n", b"y" * 101, b"\r\n"]
    assert run(kind, lambda: echo_session(pieces, 1000)) == b"ok\r\n"


# Everything in one write: mode switches and buffer clears with the rest already buffered.


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
    await wait_for_async(lambda: not proto_mod.stats.open, 5, message="the connection lost")
    server.close()
    await server.wait_closed()
    return reply


@pytest.fixture
def no_connection_left() -> Any:
    proto_mod.stats.open.clear()
    yield
    assert not proto_mod.stats.open, "a connection was never lost"


class Switcher(basic.LineReceiver):
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
@pytest.mark.usefixtures("no_connection_left")
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


class Clearer(basic.LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        if line == b"CLEAR":
            rest = self.clearLineBuffer()
            self.transport.write(b"cleared:" + rest + b"|")
        else:
            self.transport.write(b"line:" + line + b"|")

    def connectionLost(self, reason: BaseException | None = None) -> None:
        self.factory.events.append(type(reason).__name__)


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.usefixtures("no_connection_left")
def test_clear_line_buffer_from_line_received(kind: str) -> None:
    factory = Recording(Clearer)
    reply = run(kind, lambda: exchange(factory, b"one\r\nCLEAR\r\ntwo\r\nthr"))
    assert reply == b"line:one|cleared:two\r\nthr|"
    assert factory.events == ["ConnectionDone"]


class Raising(basic.LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        if line == b"boom":
            raise ValueError("boom in lineReceived")
        self.sendLine(line)

    def connectionLost(self, reason: BaseException | None = None) -> None:
        self.factory.events.append(type(reason).__name__)


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.usefixtures("no_connection_left")
def test_exception_in_line_received_closes_the_connection(kind: str) -> None:
    factory = Recording(Raising)
    reply = run(kind, lambda: exchange(factory, b"a\r\nboom\r\nb\r\n", half_close=False))
    assert reply == b"a\r\n"
    assert factory.events == ["ConnectionLost"]


class TooLong(basic.LineReceiver):
    MAX_LENGTH = 10

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.usefixtures("no_connection_left")
def test_overlong_line_closes_after_earlier_lines_are_answered(kind: str) -> None:
    reply = run(kind, lambda: exchange(Recording(TooLong), b"ok\r\n" + b"x" * 50 + b"\r\nno\r\n"))
    assert reply == b"ok\r\n"


class ReversingInt16(basic.Int16StringReceiver):
    def stringReceived(self, string: bytes) -> None:
        self.sendString(string[::-1])
        if string == b"bye":
            self.transport.loseConnection()


class UpperNetstring(basic.NetstringReceiver):
    def stringReceived(self, string: bytes) -> None:
        self.sendString(string.upper())


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.usefixtures("no_connection_left")
def test_string_receivers_in_one_chunk(kind: str) -> None:
    payload = b"\x00\x03abc\x00\x00\x00\x03bye\x00\x02zz"
    assert run(kind, lambda: exchange(Recording(ReversingInt16), payload)) == (
        b"\x00\x03cba\x00\x00\x00\x03eyb"
    )
    net = run(kind, lambda: exchange(Recording(UpperNetstring), b"3:abc,0:,2:xy,x:"))
    assert net == b"3:ABC,0:,2:XY,"


# -- properties: arbitrary byte streams in arbitrary chunkings ------------------------

# Per test, not a global profile, so other test modules keep their own settings.
examples = settings(max_examples=150, deadline=None)


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut at arbitrary points."""
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=20))
    points = sorted({0, len(stream), *cuts})
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed_pieces(protocol: Any, pieces: list[bytes]) -> None:
    """Feed like a real transport: nothing more once loseConnection has been called."""
    for piece in pieces:
        if protocol.transport.disconnecting:
            return
        protocol.dataReceived(piece)


class Lines(basic.LineReceiver):
    MAX_LENGTH = 8

    def connectionMade(self) -> None:
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)


class Netstrings(basic.NetstringReceiver):
    MAX_LENGTH = 12

    def connectionMade(self) -> None:
        self.strings: list[bytes] = []

    def stringReceived(self, string: bytes) -> None:
        self.strings.append(string)


def connected_recorder(
    base: type[basic.IntNStringReceiver], limit: int
) -> basic.IntNStringReceiver:
    class Recorder(base):  # type: ignore[valid-type, misc]
        MAX_LENGTH = limit

        def connectionMade(self) -> None:
            self.strings: list[bytes] = []

        def stringReceived(self, string: bytes) -> None:
            self.strings.append(string)

    protocol: basic.IntNStringReceiver = Recorder()
    protocol.makeConnection(StringTransport())
    return protocol


# properties of LineReceiver


def line_model(stream: bytes, delimiter: bytes, limit: int) -> tuple[list[bytes], bool]:
    """The lines a LineReceiver delivers for `stream`, and whether it disconnects."""
    *complete, tail = stream.split(delimiter)
    lines: list[bytes] = []
    for line in complete:
        if len(line) > limit:
            return lines, True
        lines.append(line)
    return lines, len(tail) >= limit + len(delimiter)


line_streams = st.binary(max_size=200) | st.lists(
    st.sampled_from([b"a", b"bb", b"\r", b"\n", b"\r\n", b"x" * 7, b"y" * 9]), max_size=60
).map(b"".join)


@examples
@given(st.data(), line_streams)
def test_lines_match_the_model_in_any_chunking(data: st.DataObject, stream: bytes) -> None:
    protocol = connected(Lines())
    feed_pieces(protocol, data.draw(chunked(stream)))
    assert (protocol.lines, protocol.transport.disconnecting) == line_model(
        stream, b"\r\n", Lines.MAX_LENGTH
    )


line_text = st.binary(max_size=Lines.MAX_LENGTH).filter(lambda line: b"\r\n" not in line)


@examples
@given(st.data(), st.lists(line_text, max_size=30))
def test_lines_round_trip(data: st.DataObject, lines: list[bytes]) -> None:
    sender = connected(Lines())
    for line in lines:
        sender.sendLine(line)
    stream = sender.transport.value()
    receiver = connected(Lines())
    feed_pieces(receiver, data.draw(chunked(stream)))
    assert receiver.lines == lines
    assert not receiver.transport.disconnecting


@examples
@given(st.data(), st.binary(max_size=200))
def test_raw_mode_passes_every_byte(data: st.DataObject, stream: bytes) -> None:
    """Switching to raw mode after the first line hands on exactly the rest."""

    class Switching(Lines):
        MAX_LENGTH = 16384

        def lineReceived(self, line: bytes) -> None:
            super().lineReceived(line)
            self.setRawMode()
            self.raw = b""

        def rawDataReceived(self, chunk: bytes) -> None:
            self.raw += chunk

    protocol = connected(Switching())
    feed_pieces(protocol, data.draw(chunked(b"first\r\n" + stream)))
    assert protocol.lines == [b"first"]
    assert protocol.raw == stream


# properties of NetstringReceiver

netstring_streams = st.binary(max_size=120) | st.lists(
    st.sampled_from([b"0", b"1", b"2", b"9", b"12", b":", b",", b"a", b" ", b"-", b"3:abc,"]),
    max_size=40,
).map(b"".join)


@examples
@given(st.data(), netstring_streams)
def test_netstrings_do_not_depend_on_chunking(data: st.DataObject, stream: bytes) -> None:
    whole = connected(Netstrings())
    whole.dataReceived(stream)
    pieces = connected(Netstrings())
    feed_pieces(pieces, data.draw(chunked(stream)))
    assert (pieces.strings, pieces.transport.disconnecting) == (
        whole.strings,
        whole.transport.disconnecting,
    )
    # What was delivered is exactly the valid netstrings at the start of the stream.
    encoded = b"".join(b"%d:%s," % (len(s), s) for s in whole.strings)
    assert stream.startswith(encoded)
    assert all(len(s) <= Netstrings.MAX_LENGTH for s in whole.strings)


@examples
@given(st.data(), st.lists(st.binary(max_size=Netstrings.MAX_LENGTH), max_size=20))
def test_netstrings_round_trip(data: st.DataObject, strings: list[bytes]) -> None:
    sender = connected(Netstrings())
    for string in strings:
        sender.sendString(string)
    receiver = connected(Netstrings())
    feed_pieces(receiver, data.draw(chunked(sender.transport.value())))
    assert receiver.strings == strings
    assert not receiver.transport.disconnecting


# properties of IntNStringReceiver

INT_CLASSES = [basic.Int32StringReceiver, basic.Int16StringReceiver, basic.Int8StringReceiver]


def intn_model(stream: bytes, fmt: str, limit: int) -> tuple[list[bytes], bool]:
    """The strings an IntN receiver delivers for `stream`, and whether it disconnects."""
    size = struct.calcsize(fmt)
    strings: list[bytes] = []
    offset = 0
    while len(stream) - offset >= size:
        (length,) = struct.unpack_from(fmt, stream, offset)
        if length > limit:
            return strings, True
        if len(stream) < offset + size + length:
            break
        strings.append(stream[offset + size : offset + size + length])
        offset += size + length
    return strings, False


@examples
@given(st.data(), st.sampled_from(INT_CLASSES), st.binary(max_size=120))
def test_intn_match_the_model_in_any_chunking(
    data: st.DataObject, base: type[basic.IntNStringReceiver], stream: bytes
) -> None:
    protocol = connected_recorder(base, 20)
    feed_pieces(protocol, data.draw(chunked(stream)))
    delivered = protocol.strings  # type: ignore[attr-defined]
    assert (delivered, protocol.transport.disconnecting) == intn_model(
        stream, base.structFormat, 20
    )


@examples
@given(st.data(), st.sampled_from(INT_CLASSES), st.lists(st.binary(max_size=300), max_size=12))
def test_intn_round_trip(
    data: st.DataObject, base: type[basic.IntNStringReceiver], strings: list[bytes]
) -> None:
    sender = connected_recorder(base, 99999)
    limit = 2 ** (8 * base.prefixLength)
    sendable = [s for s in strings if len(s) < limit]
    for string in strings:
        if len(string) >= limit:
            try:
                sender.sendString(string)
            except basic.StringTooLongError:
                continue
            raise AssertionError("a string too long for the prefix was sent")
        sender.sendString(string)
    receiver = connected_recorder(base, 99999)
    feed_pieces(receiver, data.draw(chunked(sender.transport.value())))
    assert receiver.strings == sendable  # type: ignore[attr-defined]
