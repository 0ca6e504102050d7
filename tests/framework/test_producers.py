"""FileSender, LineOnlyReceiver and StatefulStringProtocol: what forkd.basic lacked beside
Twisted's (issue 9, item 18). The fake-transport tests follow Twisted's own
(twisted/protocols/test/test_basic.py); the last ones stream through a real socket."""

from __future__ import annotations

import asyncio
import io
import os
from typing import Any

import pytest

from forkd import basic
from forkd.producers import Completion, FileSender
from forkd.protocol import Factory, protocol_factory
from forkd.testing import StringTransport, connect
from tests.loops import LOOPS, run


# -- LineOnlyReceiver ------------------------------------------------------------------------
class Lines(basic.LineOnlyReceiver):
    MAX_LENGTH = 64

    def connectionMade(self) -> None:
        self.received: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.received.append(line)
        if line == b"stop":
            self.transport.loseConnection()


def lines() -> Lines:
    factory = Factory()
    factory.protocol = Lines
    protocol: Lines = connect(factory, StringTransport())
    return protocol


def test_lines_split_at_the_delimiter_in_any_chunking() -> None:
    stream = b"first line\r\nsecond\r\n\r\nlast, no delimiter yet"
    for size in range(1, len(stream) + 1):
        protocol = lines()
        for start in range(0, len(stream), size):
            protocol.dataReceived(stream[start : start + size])
        assert protocol.received == [b"first line", b"second", b""]


def test_send_line_appends_the_delimiter() -> None:
    protocol = lines()
    protocol.sendLine(b"hello")
    assert protocol.transport.value() == b"hello\r\n"


def test_a_line_too_long_closes_the_connection() -> None:
    protocol = lines()
    protocol.dataReceived(b"x" * 65 + b"\r\nafter\r\n")
    assert protocol.received == [] and protocol.transport.disconnecting


def test_a_partial_line_too_long_closes_the_connection() -> None:
    protocol = lines()
    protocol.dataReceived(b"y" * 65)
    assert protocol.transport.disconnecting


def test_no_line_after_the_protocol_closed_the_connection() -> None:
    protocol = lines()
    protocol.dataReceived(b"one\r\nstop\r\nnot this\r\n")
    assert protocol.received == [b"one", b"stop"]


# -- StatefulStringProtocol --------------------------------------------------------------------
class Login(basic.StatefulStringProtocol, basic.NetstringReceiver):
    def proto_init(self, string: bytes) -> str:
        self.user = string
        return "password"

    def proto_password(self, string: bytes) -> str:
        self.password = string
        return "done"


def test_each_string_goes_to_the_handler_of_the_state_and_done_closes() -> None:
    factory = Factory()
    factory.protocol = Login
    protocol: Login = connect(factory, StringTransport())
    protocol.dataReceived(b"5:alice,6:secret,")
    assert (protocol.user, protocol.password, protocol.state) == (b"alice", b"secret", "done")
    assert protocol.transport.disconnecting


def test_a_state_without_a_handler_drops_the_string(caplog: pytest.LogCaptureFixture) -> None:
    factory = Factory()
    factory.protocol = Login
    protocol: Login = connect(factory, StringTransport())
    protocol.state = "nowhere"
    protocol.dataReceived(b"3:abc,")
    assert protocol.state == "nowhere" and not protocol.transport.disconnecting
    assert "proto_nowhere" in caplog.text


# -- FileSender with a fake consumer -------------------------------------------------------------
def test_the_sender_registers_as_a_pull_producer() -> None:
    consumer = StringTransport()
    sender = FileSender()
    sender.beginFileTransfer(io.BytesIO(b"data"), consumer)
    assert consumer.producer is sender


def test_each_resume_sends_one_chunk_and_the_end_completes() -> None:
    consumer = StringTransport()
    sender = FileSender()
    sender.CHUNK_SIZE = 4
    done = sender.beginFileTransfer(io.BytesIO(b"0123456789"), consumer)
    for expected in (b"0123", b"01234567", b"0123456789"):
        sender.resumeProducing()
        assert consumer.value() == expected and not done.done
    sender.resumeProducing()
    assert done.done and done.result() == b"9" and consumer.producer is None


def test_a_transform_applies_to_every_chunk() -> None:
    consumer = StringTransport()
    done = FileSender().beginFileTransfer(io.BytesIO(b"abc"), consumer, lambda c: c.upper())
    while not done.done:
        consumer.producer.resumeProducing()
    assert consumer.value() == b"ABC" and done.result() == b"C"


def test_a_consumer_that_stops_it_fails_the_completion() -> None:
    consumer = StringTransport()
    sender = FileSender()
    done = sender.beginFileTransfer(io.BytesIO(b"abc"), consumer)
    sender.stopProducing()
    with pytest.raises(Exception, match="Consumer asked us to stop producing"):
        done.result()


def test_a_completion_is_awaitable_and_finishes_once() -> None:
    async def main() -> Any:
        completion = Completion()
        asyncio.get_running_loop().call_soon(completion.set_result, 42)
        return await completion

    assert asyncio.run(main()) == 42
    finished = Completion()
    finished.set_result(1)
    with pytest.raises(RuntimeError):
        finished.set_result(2)


# -- FileSender through a real connection ----------------------------------------------------------
class Send(basic.LineOnlyReceiver):
    """Answers a line naming a size with that many bytes of a file, then closes."""

    def lineReceived(self, line: bytes) -> None:
        data = self.factory.content[: int(line)]
        done = FileSender().beginFileTransfer(io.BytesIO(data), self.transport)
        done.add_done_callback(lambda _: self.transport.loseConnection())


@pytest.mark.parametrize("kind", LOOPS)
def test_a_file_streams_whole_through_a_real_socket_driven_by_the_transport(kind: str) -> None:
    """4 MiB is far past the transport's high-water mark: the pull producer is paused and
    asked again as the socket drains, and every byte arrives in order."""
    factory = Factory()
    factory.protocol = Send
    factory.content = os.urandom(4 << 20)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol_factory(factory), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"%d\r\n" % len(factory.content))
            received = await reader.read(-1)
            writer.close()
            return received
        finally:
            server.close()

    assert run(kind, main) == factory.content
