"""The master's /metrics, /livez and /readyz protocol, and the totals behind /metrics."""

from __future__ import annotations

import pytest

from forkd.control.metrics_http import MAX_REQUEST, MetricsHTTP
from forkd.supervisor.metrics import MasterMetrics
from forkd.supervisor.supervision import WorkerProcess
from forkd.testing import FakeMaster, StringTransport


def answer(master: FakeMaster, *chunks: bytes) -> bytes:
    protocol = MetricsHTTP()
    protocol.master = master
    transport = StringTransport()
    protocol.makeConnection(transport)
    for chunk in chunks:
        protocol.dataReceived(chunk)
    assert transport.disconnecting, "one request, one response, then close"
    return bytes(transport.value())


@pytest.fixture
def master() -> FakeMaster:
    return FakeMaster()


def test_metrics_in_the_prometheus_text_format(master: FakeMaster) -> None:
    out = answer(master, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert body == b"# a fake master's metrics\nforkd_fake 1.0\n"
    assert b"Content-Length: %d\r\n" % len(body) in head


def test_a_request_may_arrive_in_pieces(master: FakeMaster) -> None:
    out = answer(master, b"GET /li", b"vez HTTP/1.1\r\n", b"Host: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"\r\n\r\nok\n")


def test_readyz_follows_the_master(master: FakeMaster) -> None:
    assert answer(master, b"GET /readyz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    master.readiness = False
    out = answer(master, b"GET /readyz?verbose HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable") and out.endswith(b"not ready\n")


def test_head_has_the_length_but_no_body(master: FakeMaster) -> None:
    out = answer(master, b"HEAD /livez HTTP/1.1\r\n\r\n")
    assert out.endswith(b"\r\n\r\n") and b"Content-Length: 3\r\n" in out


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /nothing HTTP/1.1\r\n\r\n", b"404"),
        (b"garbage\r\n\r\n", b"400"),
        (b"GET / SPDY/3\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST, b"431"),
    ],
)
def test_bad_requests_get_a_status_not_an_exception(
    master: FakeMaster, request_bytes: bytes, status: bytes
) -> None:
    assert answer(master, request_bytes).startswith(b"HTTP/1.1 " + status + b" ")
    assert ("metrics_exposition", None) not in master.calls


def worker(pid: int, metrics: dict[str, float]) -> WorkerProcess:
    process = WorkerProcess(pid=pid, number=pid, generation=1, channel=None, started=0.0)
    process.metrics = dict(metrics)
    return process


def test_an_exited_workers_counters_stay_in_the_totals_and_its_gauges_do_not() -> None:
    totals = MasterMetrics()
    one = worker(1, {"requests": 10, "connections": 3, "responses|2xx": 9, "latency_sum": 0.5})
    two = worker(2, {"requests": 5, "connections": 1, "port_connections|tcp:80": 1})
    assert totals.totals([one, two])["requests"] == 15
    totals.worker_exited(one, "crash")
    after = totals.totals([two])
    assert after["requests"] == 15 and after["responses|2xx"] == 9
    assert after["connections"] == 1, "open connections are the live workers' only"
    assert totals.events["worker_exits|crash"] == 1
    again = MasterMetrics()
    again.restore(totals.snapshot([two]))  # across a re-exec
    assert again.totals([two]) == after


def test_secrets_never_reach_the_control_log() -> None:
    from forkd.control.server import REDACTED, redacted

    args = {
        "name": "telnet",
        "options": ["--port", "8023", "--password", "hunter2", "--api-token=abc", "-p", "1"],
        "password": "x",
    }
    assert redacted(args) == {
        "name": "telnet",
        "options": ["--port", "8023", "--password", REDACTED, f"--api-token={REDACTED}", "-p", "1"],
        "password": REDACTED,
    }
