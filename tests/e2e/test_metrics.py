"""/metrics, /livez and /readyz served by a real master (`forkd start --metrics`), read with
prometheus_client's own parser while real clients load the workers."""

from __future__ import annotations

import http.client
import os
import pathlib
import signal
import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forkd.app import Application
from forkd.ports import TCPPort
from forkd.testing import RunningForkd, forkctl, free_port, wait_for
from forkd.web import server
from forkd.web.hello import Hello
from tests.loads import KeepAliveLoad

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def hello_tap(directory: pathlib.Path, port: int) -> str:
    app = Application("hello")
    app.addPort(TCPPort(port, server.Site(Hello()), interface="127.0.0.1"))
    app.tapfile = str(directory / "hello.tap")
    app.save()
    return app.tapfile


def fetch(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[str, float]:
    """Every sample as `name{label=value,...}` -> value, parsed by prometheus_client."""
    status, body = fetch(port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def requests_total(port: int) -> float:
    return scrape(port)["forkd_requests_total"]


def sent(n: int, port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(n):
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"Hello, world!\n"
    conn.close()


def test_counters_add_up_what_clients_sent_and_survive_a_reload_and_a_kill(
    tmp_path: pathlib.Path,
) -> None:
    port, metrics = free_port(), free_port()
    tap = hello_tap(tmp_path, port)
    ctl = str(tmp_path / "hello.ctl")
    with RunningForkd(tap, "--metrics", f"127.0.0.1:{metrics}", workers=2) as forkd:
        workers = forkd.wait_workers(2)
        assert fetch(metrics, "/livez") == (200, b"ok\n")
        assert fetch(metrics, "/readyz") == (200, b"ready\n")
        sent(100, port)
        wait_for(lambda: requests_total(metrics) == 100, message="100 requests counted")
        first = scrape(metrics)
        assert first["forkd_workers{state=ready}"] == 2
        assert first["forkd_http_responses_total{code=2xx}"] == 100
        assert first["forkd_http_request_duration_seconds_count"] == 100
        assert first[f"forkd_port_requests_total{{port=tcp:127.0.0.1:{port}}}"] == 100

        done = forkctl(ctl, "reload")
        assert done.returncode == 0, done.stderr
        workers = forkd.wait_workers(2, exclude=workers, timeout=30)
        sent(50, port)
        wait_for(lambda: requests_total(metrics) == 150, message="kept across the reload")
        after = scrape(metrics)
        assert after["forkd_rollouts_total{kind=reload,outcome=done}"] == 1
        assert after["forkd_worker_exits_total{reason=reload}"] == 2

        os.kill(sorted(workers)[0], signal.SIGKILL)
        forkd.wait_workers(2, exclude={sorted(workers)[0]}, timeout=30)
        sent(50, port)
        wait_for(lambda: requests_total(metrics) == 200, message="kept across a kill")
        assert scrape(metrics)["forkd_worker_exits_total{reason=crash}"] == 1


def test_series_do_not_grow_with_worker_restarts(tmp_path: pathlib.Path) -> None:
    port, metrics = free_port(), free_port()
    tap = hello_tap(tmp_path, port)
    with RunningForkd(tap, "--metrics", f"127.0.0.1:{metrics}", workers=1) as forkd:
        workers = forkd.wait_workers(1)
        sent(5, port)
        wait_for(lambda: requests_total(metrics) == 5, message="first requests counted")
        series = set(scrape(metrics))
        for _ in range(50):
            [pid] = workers
            os.kill(pid, signal.SIGKILL)
            workers = forkd.wait_workers(1, exclude=workers, timeout=30)
        sent(5, port)
        wait_for(lambda: requests_total(metrics) == 10, message="counted after 50 restarts")
        last = scrape(metrics)
        assert set(last) == series, set(last) ^ series
        assert last["forkd_worker_starts_total"] == 51
        assert last["forkd_worker_exits_total{reason=crash}"] == 50


def test_shutdown_delay_fails_readiness_first_and_keeps_serving(tmp_path: pathlib.Path) -> None:
    """Kubernetes' order: at SIGTERM /readyz turns 503, the ports serve on for the delay
    (while endpoints are removed), then the drain. No request fails on the way."""
    port, metrics = free_port(), free_port()
    tap = hello_tap(tmp_path, port)
    ctl = str(tmp_path / "hello.ctl")
    args = ("--metrics", f"127.0.0.1:{metrics}", "--shutdown-delay", "4")
    forkd = RunningForkd(tap, *args, workers=2)
    with forkd, KeepAliveLoad(port, clients=4) as load:
        forkd.wait_workers(2)
        wait_for(lambda: load.ok > 100, message="load running")
        assert fetch(metrics, "/readyz")[0] == 200
        check = forkctl(ctl, "status", "--check")
        assert check.returncode == 0 and check.stdout.startswith("ready: 2/2"), check
        forkd.signal(signal.SIGTERM)
        wait_for(lambda: fetch(metrics, "/readyz")[0] == 503, timeout=1.5, message="503 at once")
        served = load.ok
        wait_for(lambda: load.ok > served + 200, timeout=1.5, message="serving during the delay")
        assert forkd.process is not None and forkd.process.poll() is None, "not stopped yet"
        assert forkctl(ctl, "status", "--check").returncode == 1, "running, not ready"
        load.__exit__()  # the clients stop before the drain ends the delay's grace
        assert forkd.stop() == 0
    assert forkctl(ctl, "status", "--check").returncode == 3, "not running"
    assert load.errors == [], load.errors[:5]
    print(f"\nshutdown delay: {load.ok} requests during TERM + 4s delay, {len(load.errors)} failed")


class ReadyWorkers:
    """Scrapes /metrics over and over, keeping the fewest ready workers it saw."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.fewest: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready = scrape(self.port)["forkd_workers{state=ready}"]
            self.fewest = ready if self.fewest is None else min(self.fewest, ready)

    def __enter__(self) -> ReadyWorkers:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.mark.parametrize(
    "limit",
    [
        ("--max-requests", "300", "--max-requests-jitter", "50"),
        ("--max-rss", "1"),  # every worker is over 1 MiB: each is recycled in turn
        ("--max-lifetime", "1"),
    ],
    ids=["max-requests", "max-rss", "max-lifetime"],
)
def test_recycling_replaces_workers_one_at_a_time_under_load(
    tmp_path: pathlib.Path, limit: tuple[str, ...]
) -> None:
    port, metrics = free_port(), free_port()
    tap = hello_tap(tmp_path, port)
    forkd = RunningForkd(tap, "--metrics", f"127.0.0.1:{metrics}", *limit, workers=2)
    with forkd:
        first = forkd.wait_workers(2)
        with KeepAliveLoad(port, clients=4) as load, ReadyWorkers(metrics) as ready:

            def recycled() -> float:
                return scrape(metrics)["forkd_worker_exits_total{reason=recycle}"]

            wait_for(lambda: recycled() >= 4, timeout=60, message="four workers recycled")
        assert load.errors == [], (load.errors[:5], forkd.log()[-3000:])
        assert ready.fewest is not None and ready.fewest >= 2, "capacity dipped"
        assert not forkd.worker_pids() & first, "the first workers are gone"
        print(f"\nrecycling {limit[0]}: {load.ok} requests, {len(load.errors)} failed")


HOLDING_APP = """
import threading

released = threading.Event()


def app(environ, start_response):
    if environ["PATH_INFO"] == "/release":
        released.set()
    else:
        released.wait(30)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"""


def test_busy_wsgi_threads_are_counted(tmp_path: pathlib.Path) -> None:
    (tmp_path / "holding.py").write_text(HOLDING_APP)
    port, metrics = free_port(), free_port()
    serve = ("--bind", f"127.0.0.1:{port}", "--threads", "3", "--metrics", f"127.0.0.1:{metrics}")
    with RunningForkd.serving(tmp_path, "holding:app", *serve):
        held = threading.Thread(target=fetch, args=(port, "/hold"), daemon=True)
        held.start()
        wait_for(
            lambda: scrape(metrics)["forkd_wsgi_threads{state=busy}"] == 1,
            message="one busy thread",
        )
        assert scrape(metrics)["forkd_wsgi_threads{state=idle}"] == 2
        assert fetch(port, "/release") == (200, b"done")
        held.join(10)
        wait_for(
            lambda: scrape(metrics)["forkd_wsgi_threads{state=busy}"] == 0,
            message="the threads idle again",
        )
