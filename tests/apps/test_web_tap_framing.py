"""The web tap (forkd.web's static files, no application) served by a real `forkd start`,
its responses read through h11 one by one and pipelined.

Static files always know their length: the web tap sends no chunked body and no 204, so
here the cases are Content-Length bodies (in the write of the headers, and by sendfile),
HEAD, 304, 206 and 416, redirects and errors, and a request body on a 405 that must be
read past for the next request to parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from forkd.testing import RunningForkd, free_port, make_tap
from forkd.web.static import SMALL_FILE
from tests.apps import framing
from tests.apps.framing import LENGTH, NONE, Case
from tests.apps.serverlog import ServerLog
from tests.h11client import H11Client

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("web_tap_framing")]

SMALL = b"a small file, sent in the write of its headers\n"
BIG = bytes(range(256)) * (4 * SMALL_FILE // 256)  # sent by sendfile
INDEX = b"<!DOCTYPE html><title>index</title>\n"


class Served:
    def __init__(self, port: int, forkd: RunningForkd, etag: str) -> None:
        self.port = port
        self.forkd = forkd
        self.etag = etag  # of small.txt
        self.log = ServerLog(forkd)


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("webroot")
    (root / "small.txt").write_bytes(SMALL)
    (root / "big.bin").write_bytes(BIG)
    (root / "index.html").write_bytes(INDEX)
    (root / "sub").mkdir()
    (root / "sub" / "note.txt").write_bytes(b"note\n")
    port = free_port()
    tap = make_tap(
        tmp_path_factory.mktemp("webtap") / "web.tap",
        "web",
        *("--port", str(port), "--path", str(root)),
    )
    with RunningForkd(tap, workers=1) as forkd:
        with H11Client(port) as client:
            etag = client.request("HEAD", "/small.txt").header("etag")
        assert etag is not None
        served = Served(port, forkd, etag.decode("latin-1"))
        yield served
    assert forkd.returncode == 0, forkd.log()
    served.log.check()


@pytest.fixture(autouse=True)
def clean_log(served: Served) -> Iterator[None]:
    served.log.check()  # what the server logged since the last look (its start, or a test)
    yield
    served.log.check()


def cases(etag: str) -> list[Case]:
    return [
        Case("GET", "/small.txt", 200, LENGTH, SMALL),
        framing.head_of(Case("GET", "/small.txt", 200, LENGTH)),
        Case("GET", "/big.bin", 200, LENGTH, BIG),
        framing.head_of(Case("GET", "/big.bin", 200, LENGTH)),
        Case("GET", "/small.txt", 304, NONE, b"", (("If-None-Match", etag),)),
        Case("GET", "/big.bin", 206, LENGTH, BIG[10:20], (("Range", "bytes=10-19"),)),
        Case("GET", "/small.txt", 416, LENGTH, None, (("Range", "bytes=100000-"),)),
        Case("GET", "/sub", 301, LENGTH, b""),
        Case("GET", "/sub/", 200, LENGTH),
        Case("GET", "/", 200, LENGTH, INDEX),
        Case("GET", "/missing", 404, LENGTH),
        Case("POST", "/small.txt", 405, LENGTH, None, (), b"a body to read past" * 100),
        Case("GET", "/small.txt", 200, LENGTH, SMALL),
    ]


def test_head_has_the_headers_of_get_and_no_body(served: Served) -> None:
    framing.head_matches_get(served.port, ["/small.txt", "/big.bin", "/sub", "/sub/", "/"])


def test_responses_one_by_one_on_one_keep_alive_connection(served: Served) -> None:
    framing.one_by_one(served.port, cases(served.etag))


def test_pipelined_responses_come_back_in_order(served: Served) -> None:
    framing.pipelined(served.port, cases(served.etag))
