"""A FastAPI application (tests/apps/asgiapps.py) served by a real `forkd serve`, its
responses read through h11 one by one and pipelined."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from forkd.testing import RunningForkd, free_port
from tests.apps import asgiapps, framing
from tests.apps.framing import CHUNKED, LENGTH, NONE, Case
from tests.apps.serverlog import ServerLog
from tests.h11client import H11Client

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("asgi_apps")]

STREAM_BODY = b"".join(b"line %d\n" % n for n in range(100))
JSON = (("Content-Type", "application/json"),)


class Served:
    def __init__(self, port: int, forkd: RunningForkd) -> None:
        self.port = port
        self.forkd = forkd
        self.log = ServerLog(forkd, asgiapps.FAILING_ON_PURPOSE)


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("asgiapps")
    port = free_port()
    app = "tests.apps.asgiapps:app"
    with RunningForkd.serving(directory, app, "--bind", f"127.0.0.1:{port}") as forkd:
        served = Served(port, forkd)
        yield served
    assert forkd.returncode == 0, forkd.log()
    served.log.check()


@pytest.fixture(autouse=True)
def clean_log(served: Served) -> Iterator[None]:
    served.log.check()  # what the server logged since the last look (its start, or a test)
    yield
    served.log.check()


def test_forkd_serve_found_the_asgi_interface(served: Served) -> None:
    from forkd import tapfile

    [port] = tapfile.load(served.forkd.tap).ports
    assert port.factory.interface == "asgi"
    with H11Client(served.port) as client:
        response = client.request("GET", "/hello")
    assert json.loads(response.body)["pid"] in served.forkd.worker_pids()


def test_an_error_is_a_500_without_a_traceback_and_the_connection_goes_on(
    served: Served,
) -> None:
    with H11Client(served.port) as client:
        error = client.request("GET", "/boom")
        after = client.request("GET", "/hello")
    assert error.status == 500 and b"hunter2" not in error.body and b"Traceback" not in error.body
    assert after.status == 200 and after.keep_alive
    assert "ASGI application failed on /boom" in served.log.new()


def test_head_has_the_headers_of_get_and_no_body(served: Served) -> None:
    framing.head_matches_get(served.port, ["/hello", "/stream"])


CASES = [
    Case("GET", "/hello", 200, LENGTH),
    framing.head_of(Case("GET", "/hello", 200, LENGTH)),
    Case("GET", "/stream", 200, CHUNKED, STREAM_BODY),
    framing.head_of(Case("GET", "/stream", 200, CHUNKED)),
    Case("GET", "/nothing", 204, NONE, b""),
    Case("GET", "/tagged", 200, LENGTH, b'{"version":1}'),
    Case("GET", "/tagged", 304, NONE, b"", (("If-None-Match", '"v1"'),)),
    Case("POST", "/echo", 200, LENGTH, b'{"got":{"a":1}}', JSON, b'{"a": 1}'),
    Case("POST", "/echo", 422, LENGTH, None, JSON, b"not json"),
    Case("GET", "/missing", 404, LENGTH),
    Case("DELETE", "/hello", 405, LENGTH),
    Case("GET", "/hello", 200, LENGTH),
]


def test_responses_one_by_one_on_one_keep_alive_connection(served: Served) -> None:
    framing.one_by_one(served.port, CASES)


def test_pipelined_responses_come_back_in_order(served: Served) -> None:
    framing.pipelined(served.port, CASES)
