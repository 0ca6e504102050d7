"""forkd.web.spool.Spool: first in, first out, across memory and the temporary file."""

from __future__ import annotations

import os

import pytest

from forkd.web.spool import Spool


def pieces(total: int, size: int) -> list[bytes]:
    data = os.urandom(total)
    return [data[i : i + size] for i in range(0, total, size)]


@pytest.mark.parametrize("put", [1, 7, 4096, 50_000])
@pytest.mark.parametrize("take", [1, 13, 65536])
def test_bytes_come_out_in_order_whatever_the_sizes(put: int, take: int) -> None:
    spool = Spool(memory=10_000)
    data = pieces(60_000 if put > 1 and take > 1 else 12_000, put)
    expected = b"".join(data)
    out = bytearray()
    for index, piece in enumerate(data):
        spool.append(piece)
        if index % 3 == 0:  # taking while putting, as the loop drains while the app writes
            out += spool.take(take)
    assert len(spool) == len(expected) - len(out)
    while spool:
        out += spool.take(take)
    assert bytes(out) == expected and spool.take(take) == b""
    spool.close()


def test_memory_then_disk_then_memory_again_once_drained() -> None:
    spool = Spool(memory=10)
    spool.append(b"0123456789")
    assert spool.onDisk == 0
    spool.append(b"abc")  # over the memory: to disk, and what follows goes behind it
    spool.append(b"d")
    assert spool.onDisk == 4 and len(spool) == 14
    assert spool.take(100) == b"0123456789"
    spool.append(b"e")  # memory is free, but the file is not empty: after it, on disk
    assert spool.take(100) == b"abcde" and len(spool) == 0 and spool.onDisk == 0
    spool.append(b"fg")
    assert spool.onDisk == 0 and spool.take(1) == b"f" and spool.take(5) == b"g"


def test_close_forgets_everything() -> None:
    spool = Spool(memory=4)
    spool.append(b"abcdefgh")
    spool.close()
    assert len(spool) == 0 and spool.take(10) == b""
