"""The master <-> worker channel: frames cut at every size, descriptors kept in order."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator

import pytest

from forkd.framing import HEADER, encode
from forkd.supervisor.channel import MAX_MESSAGE, Channel, ChannelClosed, ChannelError, Op


@pytest.fixture
def files(tmp_path: object) -> Iterator[list[int]]:
    """Three open descriptors of three different files, to send and recognise."""
    fds = [os.open(os.devnull, os.O_RDONLY), *os.pipe()]
    yield fds
    for fd in fds:
        os.close(fd)


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


MESSAGES = [
    ({"op": Op.ADD_PORT, "key": "tcp:1", "fds": 2}, [0, 1]),
    ({"op": Op.HEARTBEAT, "connections": 3}, []),
    ({"op": Op.ADD_PORT, "key": "tcp:2", "fds": 1}, [2]),
]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 64, 4096])
def test_every_chunk_size_gives_the_same_messages_and_descriptors(
    size: int, files: list[int]
) -> None:
    """The sender cuts the stream anywhere; each message's descriptors ride on its first
    byte, as Channel.send puts them."""
    sender, receiver_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    receiver = Channel(receiver_sock)
    received: list[tuple[dict[str, object], list[int]]] = []
    try:
        for message, which in MESSAGES:
            data = encode(message)
            for start in range(0, len(data), size):
                chunk = data[start : start + size]
                if start == 0 and which:
                    rights = array.array("i", [files[i] for i in which])
                    sender.sendmsg([chunk], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
                else:
                    sender.sendall(chunk)
                received += receiver.receive()
        assert [m for m, _ in received] == [{**m, "op": str(m["op"])} for m, _ in MESSAGES]
        for (_, fds), (_, which) in zip(received, MESSAGES, strict=True):
            assert len(fds) == len(which)
            assert all(same_file(got, files[i]) for got, i in zip(fds, which, strict=True))
            for fd in fds:
                os.close(fd)
    finally:
        sender.close()
        receiver.close()


def test_send_and_receive_through_a_pair_with_descriptors(files: list[int]) -> None:
    master_end, worker_end = Channel.pair()
    try:
        master_end.send({"op": Op.ADD_PORT, "key": "k"}, [files[1]])
        assert master_end.flush()
        [(message, fds)] = worker_end.receive()
        assert message == {"op": "add_port", "key": "k", "fds": 1}
        assert len(fds) == 1 and same_file(fds[0], files[1]) and fds[0] != files[1]
        os.close(fds[0])
    finally:
        master_end.close()
        worker_end.close()


def test_a_length_over_the_limit_is_garbage_not_a_wait() -> None:
    sender, receiving = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(receiving)
    try:
        sender.sendall(HEADER.pack(MAX_MESSAGE + 1) + b"{")
        with pytest.raises(ChannelError, match="over the"):
            channel.receive()
    finally:
        sender.close()
        channel.close()


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"no": "op"}', b"\xff\xfe"])
def test_a_frame_that_is_not_a_message_is_garbage(body: bytes) -> None:
    sender, receiving = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(receiving)
    try:
        sender.sendall(HEADER.pack(len(body)) + body)
        with pytest.raises(ChannelError):
            channel.receive()
    finally:
        sender.close()
        channel.close()


def test_eof_with_nothing_pending_is_closed() -> None:
    sender, receiving = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(receiving)
    sender.close()
    with pytest.raises(ChannelClosed):
        channel.receive()
    assert channel.closed


def test_descriptors_received_but_never_handed_out_are_closed(files: list[int]) -> None:
    sender, receiving = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(receiving)
    data = encode({"op": Op.ADD_PORT, "key": "k", "fds": 1})
    rights = array.array("i", [files[0]])
    sender.sendmsg([data[:3]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
    assert channel.receive() == []  # the message is incomplete: its descriptor waits
    before = len(os.listdir("/proc/self/fd"))
    channel.close()
    sender.close()
    # both sockets and the descriptor that was queued for the incomplete message
    assert len(os.listdir("/proc/self/fd")) == before - 3
