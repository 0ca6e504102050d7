"""Property tests for forkd.basic: arbitrary byte streams in arbitrary chunkings.

Each receiver is checked against a small model of its wire format: what it delivers, and
whether it closes the connection, must not depend on how the stream was chunked, and
whatever a receiver sends must come back unchanged.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from forkd import basic
from forkd.testing import StringTransport

# Per test, not a global profile, so other test modules keep their own settings.
examples = settings(max_examples=150, deadline=None)


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut at arbitrary points."""
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=20))
    points = sorted({0, len(stream), *cuts})
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed(protocol: Any, pieces: list[bytes]) -> None:
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


class Strings(basic.NetstringReceiver):
    MAX_LENGTH = 12

    def connectionMade(self) -> None:
        self.strings: list[bytes] = []

    def stringReceived(self, string: bytes) -> None:
        self.strings.append(string)


def recording(base: type[basic.IntNStringReceiver], limit: int) -> basic.IntNStringReceiver:
    class Recorder(base):  # type: ignore[valid-type, misc]
        MAX_LENGTH = limit

        def connectionMade(self) -> None:
            self.strings: list[bytes] = []

        def stringReceived(self, string: bytes) -> None:
            self.strings.append(string)

    protocol: basic.IntNStringReceiver = Recorder()
    protocol.makeConnection(StringTransport())
    return protocol


def connected(protocol: Any) -> Any:
    protocol.makeConnection(StringTransport())
    return protocol


# -- LineReceiver -----------------------------------------------------------------------


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
    feed(protocol, data.draw(chunked(stream)))
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
    feed(receiver, data.draw(chunked(stream)))
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
    feed(protocol, data.draw(chunked(b"first\r\n" + stream)))
    assert protocol.lines == [b"first"]
    assert protocol.raw == stream


# -- NetstringReceiver ------------------------------------------------------------------

netstring_streams = st.binary(max_size=120) | st.lists(
    st.sampled_from([b"0", b"1", b"2", b"9", b"12", b":", b",", b"a", b" ", b"-", b"3:abc,"]),
    max_size=40,
).map(b"".join)


@examples
@given(st.data(), netstring_streams)
def test_netstrings_do_not_depend_on_chunking(data: st.DataObject, stream: bytes) -> None:
    whole = connected(Strings())
    whole.dataReceived(stream)
    pieces = connected(Strings())
    feed(pieces, data.draw(chunked(stream)))
    assert (pieces.strings, pieces.transport.disconnecting) == (
        whole.strings,
        whole.transport.disconnecting,
    )
    # What was delivered is exactly the valid netstrings at the start of the stream.
    encoded = b"".join(b"%d:%s," % (len(s), s) for s in whole.strings)
    assert stream.startswith(encoded)
    assert all(len(s) <= Strings.MAX_LENGTH for s in whole.strings)


@examples
@given(st.data(), st.lists(st.binary(max_size=Strings.MAX_LENGTH), max_size=20))
def test_netstrings_round_trip(data: st.DataObject, strings: list[bytes]) -> None:
    sender = connected(Strings())
    for string in strings:
        sender.sendString(string)
    receiver = connected(Strings())
    feed(receiver, data.draw(chunked(sender.transport.value())))
    assert receiver.strings == strings
    assert not receiver.transport.disconnecting


# -- IntNStringReceiver -----------------------------------------------------------------

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
    protocol = recording(base, 20)
    feed(protocol, data.draw(chunked(stream)))
    delivered = protocol.strings  # type: ignore[attr-defined]
    assert (delivered, protocol.transport.disconnecting) == intn_model(
        stream, base.structFormat, 20
    )


@examples
@given(st.data(), st.sampled_from(INT_CLASSES), st.lists(st.binary(max_size=300), max_size=12))
def test_intn_round_trip(
    data: st.DataObject, base: type[basic.IntNStringReceiver], strings: list[bytes]
) -> None:
    sender = recording(base, 99999)
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
    receiver = recording(base, 99999)
    feed(receiver, data.draw(chunked(sender.transport.value())))
    assert receiver.strings == sendable  # type: ignore[attr-defined]
