"""Tests for the benchmark harness (scripts/bench_http.py and scripts/benchkit).

The harness's numbers are only as good as its parsing, its CPU accounting and its
clean-up, so those are tested here on fixed inputs and on real processes; the peers
themselves (uvicorn, nginx, ...) are not needed, except the hand-written uvloop peer,
which runs on forkd's own uvloop. A short end-to-end run needs wrk and is skipped without it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from forkd.testing import wait_for

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_http  # noqa: E402
from benchkit import peers, processes, profile, report, wrk  # noqa: E402
from benchkit.report import Measurement  # noqa: E402
from peers import uvloop_hello  # noqa: E402

WRK_REPORT = """\
Running 5s test @ http://127.0.0.1:8080/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.30us  120.00us   9.87ms   91.00%
    Req/Sec    95.12k     3.10k  101.00k    80.00%
  Latency Distribution
     50%  480.00us
     75%  550.00us
     90%  700.00us
     99%    1.25ms
  473210 requests in 5.00s, 60.12MB read
  Socket errors: connect 0, read 2, write 1, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  94642.00
Transfer/sec:     12.02MB
"""


# --- wrk -------------------------------------------------------------------------------


def test_wrk_report_is_parsed() -> None:
    result = wrk.parse(WRK_REPORT)
    assert result.requests == 473210
    assert result.duration == pytest.approx(5.0)
    assert result.requests_per_second == pytest.approx(94642.0)
    assert result.p50 == pytest.approx(480e-6)
    assert result.p99 == pytest.approx(1.25e-3)
    assert result.socket_errors == 6
    assert result.non_2xx == 7
    assert result.bytes_read == pytest.approx(60.12 * 2**20)


def test_wrk_report_in_seconds_without_errors() -> None:
    text = WRK_REPORT.replace("1.25ms", "1.50s").replace("480.00us", "2.00ms")
    text = "\n".join(line for line in text.splitlines() if "errors" not in line)
    text = "\n".join(line for line in text.splitlines() if "Non-2xx" not in line)
    result = wrk.parse(text)
    assert (result.p50, result.p99) == (pytest.approx(2e-3), pytest.approx(1.5))
    assert (result.socket_errors, result.non_2xx) == (0, 0)


@pytest.mark.parametrize("drop", ["requests in", "Requests/sec", "99%", "50%"])
def test_wrk_report_missing_a_line_is_refused(drop: str) -> None:
    text = "\n".join(line for line in WRK_REPORT.splitlines() if drop not in line)
    with pytest.raises(wrk.WrkError, match="unreadable"):
        wrk.parse(text)


def test_wrk_command_is_the_documented_one() -> None:
    argv = wrk.command("http://127.0.0.1:1/", 5)
    assert argv[:5] == ["wrk", "-t1", "-c50", "-d5s", "--latency"]
    assert argv[-1] == "http://127.0.0.1:1/"


# --- processes -------------------------------------------------------------------------


def test_cpu_delta_counts_new_processes_and_ignores_gone_ones() -> None:
    before = {1: (1.0, 0.5), 2: (5.0, 5.0)}
    after = {1: (1.5, 0.75), 3: (0.25, 0.125)}
    user, system = processes.cpu_delta(before, after)
    assert (user, system) == (pytest.approx(0.75), pytest.approx(0.375))


@pytest.mark.e2e
def test_tree_cpu_seconds_includes_children(tmp_path: Path) -> None:
    script = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    burn = [sys.executable, "-c", script + "import time; time.sleep(30)"]
    shell = ["/bin/sh", "-c", f"{shlex.join(burn)} & wait"]
    with processes.Server(shell, tmp_path) as server:

        def burnt() -> dict[int, tuple[float, float]] | None:
            seconds = server.cpu_seconds()
            return (
                seconds if len(seconds) == 2 and sum(map(sum, seconds.values())) >= 0.25 else None
            )

        seconds = wait_for(
            burnt, 20, interval=0.05, message=lambda: f"CPU of {server.cpu_seconds()}"
        )
        assert len(seconds) == 2, seconds
        assert sum(u + s for u, s in seconds.values()) >= 0.25


@pytest.mark.e2e
def test_server_stop_kills_the_whole_group(tmp_path: Path) -> None:
    # The child ignores TERM, as a stuck worker would: the group must still die.
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    argv = ["/bin/sh", "-c", f"{sys.executable} -c '{child}' & wait"]
    server = processes.Server(argv, tmp_path, grace=0.5)
    with server:
        wait_for(lambda: len(server.pids()) >= 2, 20, message="the shell and its child")
        pids = server.pids()
        assert len(pids) == 2
    gone = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], 5)
    assert not gone[1], "processes left alive"


@pytest.mark.e2e
def test_a_server_that_exits_fails_fast_with_its_output(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('boom: no such app'); sys.exit(3)"]
    started = time.monotonic()
    with processes.Server(argv, tmp_path) as server, pytest.raises(processes.ServerFailed) as e:
        server.wait_until_serving(processes.free_port(), "/", timeout=20)
    assert time.monotonic() - started < 10
    assert "code 3" in str(e.value) and "boom: no such app" in str(e.value)


@pytest.mark.e2e
def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with processes.Server(argv, tmp_path) as server, pytest.raises(processes.ServerFailed):
        server.wait_until_serving(processes.free_port(), "/", timeout=0.3)


def test_http_status_reads_the_status_line() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        pid = os.fork()
        if pid == 0:  # a one-shot server in a child, so the client side can block
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            os._exit(0)
        try:
            assert processes.http_status(port, "/x", timeout=5) == 404
        finally:
            os.waitpid(pid, 0)
    assert processes.http_status(port, "/") is None


# --- peers -----------------------------------------------------------------------------


def test_select_by_server_and_scenario() -> None:
    chosen = peers.select(["forkd", "nginx"], ["static"])
    assert [(p.server, p.scenario) for p in chosen] == [("forkd", "static"), ("nginx", "static")]
    assert {p.server for p in peers.select(None, ["hello"])} >= {"uvicorn", "gunicorn", "twisted"}
    with pytest.raises(ValueError, match="unknown server"):
        peers.select(["apache"], ["hello"])


def test_nginx_config_is_rendered(tmp_path: Path) -> None:
    ctx = peers.Context(tmp_path, tmp_path / "static")
    text = peers.nginx_config(ctx, 8123, 2).read_text()
    assert "worker_processes 2;" in text
    assert "listen 127.0.0.1:8123" in text
    assert 'return 200 "Hello, world!\\n";' in text
    assert f"alias {tmp_path / 'static'}/;" in text
    assert "access_log off;" in text and "{" in text and "{{" not in text


def test_static_file_is_one_mebibyte(tmp_path: Path) -> None:
    path = peers.make_static_file(tmp_path / "s")
    assert path.stat().st_size == 1 << 20
    assert peers.make_static_file(tmp_path / "s").read_bytes() == path.read_bytes()


def test_peer_command_lines(tmp_path: Path) -> None:
    ctx = peers.Context(tmp_path, tmp_path / "static", venv=tmp_path / "venv")
    by_label = {p.label: p for p in peers.PEERS}
    uvicorn = by_label["uvicorn"].launch(ctx, 9001, 2).argv
    assert uvicorn[uvicorn.index("--workers") : uvicorn.index("--workers") + 2] == [
        "--workers",
        "2",
    ]
    assert "--no-access-log" in uvicorn and "httptools" in uvicorn
    assert "-w" in by_label["gunicorn"].launch(ctx, 9001, 2).argv
    assert by_label["twisted"].max_workers(ctx) == 1
    assert by_label["nginx static"].launch(ctx, 9001, 1).path == "/static/big.bin"


def test_a_peer_missing_from_the_venv_is_skipped_not_crashed(tmp_path: Path) -> None:
    ctx = peers.Context(tmp_path / "w", tmp_path / "static", venv=tmp_path / "no-venv")
    uvicorn = next(p for p in peers.PEERS if p.server == "uvicorn")
    args = bench_http.parser().parse_args([])
    result = bench_http.measure(uvicorn, ctx, 1, args, 0)
    assert not result.ok and "not installed" in result.skipped


# --- the uvloop peer -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        (b"", (0, b"")),
        (b"GET / HTTP/1.1\r\n", (0, b"GET / HTTP/1.1\r\n")),
        (b"GET / HTTP/1.1\r\n\r\n", (1, b"")),
        (b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET", (2, b"GET")),
    ],
)
def test_uvloop_peer_splits_request_heads(buffer: bytes, expected: tuple[int, bytes]) -> None:
    assert uvloop_hello.split_heads(buffer) == expected


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_uvloop_peer_serves_and_stops(tmp_path: Path, workers: int) -> None:
    pytest.importorskip("uvloop")
    port = processes.free_port()
    argv = [sys.executable, str(SCRIPTS / "peers" / "uvloop_hello.py"), str(port), str(workers)]
    with processes.started(argv, tmp_path, port, "/", timeout=20) as server:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            data = b""
            while data.count(b"Hello, world!\n") < 2:
                chunk = sock.recv(4096)
                assert chunk, data
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert len(server.pids()) == (1 if workers == 1 else workers + 1)
        pids = server.pids()
    assert not [pid for pid in pids if psutil.pid_exists(pid) and not _zombie(pid)]


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- report ----------------------------------------------------------------------------


def _m(
    server: str, rps: float, cpu: float = 1.0, scenario: str = "hello", **kw: object
) -> Measurement:
    return Measurement(
        server, scenario, kw.pop("workers", 2), requests_per_second=rps,  # type: ignore[arg-type]
        requests=int(rps * 5), cpu_seconds=cpu, cpu_user_seconds=cpu * 0.6,
        p50=1e-3, p99=2e-3, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_median_round_is_kept_whole() -> None:
    rounds = [_m("forkd", 100, round=0), _m("forkd", 300, round=1), _m("forkd", 200, round=2)]
    (chosen,) = report.median_rounds(rounds)
    assert chosen.round == 2 and chosen.requests_per_second == 200


def test_ratios_and_table() -> None:
    results = [
        _m("forkd", 1000, cpu=0.5),
        _m("uvicorn", 500, cpu=0.5),
        Measurement("twisted", "hello", 2, skipped="runs 1 worker(s) only"),
    ]
    rate, cpu = report.ratios(results[1], results)
    assert rate == pytest.approx(2.0)
    assert cpu == pytest.approx(2.0)  # same CPU for half the requests
    text = report.table(results)
    lines = text.splitlines()
    assert "| forkd |" in lines[2]  # forkd leads its group
    assert "2.00x" in lines[3]
    assert "| 100.0 (60.0+40.0) |" in lines[2]
    assert "skipped: runs 1 worker(s) only" in text


def test_targets_met_and_missed() -> None:
    results = [
        _m("forkd", 1300),
        _m("uvicorn", 1000, cpu=1.5),
        _m("gunicorn", 300),
        _m("forkd", 600, scenario="static"),
        _m("nginx", 1000, scenario="static"),
    ]
    lines = report.target_lines(results)
    assert len(lines) == 3
    assert "uvicorn" in lines[0] and "): met;" in lines[0]
    assert "at equal CPU: met" in lines[0]  # more CPU for fewer requests
    assert "gunicorn" in lines[1] and "MISSED" in lines[1]
    assert "nginx" in lines[2] and "MISSED" in lines[2]


def test_spread() -> None:
    assert report.spread([100.0]) == 0.0
    assert report.spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)


# --- profile ---------------------------------------------------------------------------


def test_profile_summary() -> None:
    collapsed = (
        'process 1:"python";main (a.py:1);data_received (c.py:9);write (t.py:3) 6\n'
        'process 1:"python";main (a.py:1);data_received (c.py:9) 2\n'
        'process 1:"python";main (a.py:1);on_url (c.py:20) 2\n'
        "garbage line\n"
    )
    summary = profile.summarise(collapsed)
    assert summary.samples == 10
    assert summary.self_time[0] == ("write (t.py:3)", pytest.approx(60.0))
    assert dict(summary.inclusive)["data_received (c.py)"] == pytest.approx(80.0)
    assert "main (a.py)" not in dict(summary.inclusive)  # the trunk says nothing
    assert profile.function_of("f (x.py:3)") == "f (x.py)"
    assert profile.function_of("<module> (<frozen runpy>:88)") == "<module> (<frozen runpy>)"
    assert profile.function_of("odd") == "odd"
    assert "busy samples" in summary.lines()[0]
    assert profile.summarise("").samples == 0


def test_busy_machine_warning() -> None:
    assert bench_http.busy_warning(0.2, 2) is None
    warning = bench_http.busy_warning(3.3, 2)
    assert warning is not None and "3.30" in warning


def test_profile_command_follows_subprocesses(tmp_path: Path) -> None:
    argv = profile.record_command(tmp_path / "py-spy", 42, 5, tmp_path / "out.txt")
    assert "--subprocesses" in argv and argv[argv.index("--pid") + 1] == "42"
    assert "--nonblocking" in argv and "--native" not in argv
    native = profile.record_command(tmp_path / "py-spy", 42, 5, tmp_path / "out.txt", True)
    assert "--native" in native and "--nonblocking" not in native  # py-spy allows no both


# --- the command -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["--only", "apache"], ["--scenarios", "dynamic"], ["--duration", "0.5"], ["--rounds", "0"]],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_http.main(argv) == 2
    assert "bench_http.py:" in capsys.readouterr().err


def test_bad_worker_list_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as e:
        bench_http.parser().parse_args(["--workers", "0,x"])
    assert e.value.code == 2


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_short_end_to_end_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    argv = ["--only", "uvloop-raw", "--workers", "1", "--scenarios", "hello",
            "--duration", "1", "--warmup", "0", "--json", str(out)]  # fmt: skip
    assert bench_http.main(argv) == 0
    document = json.loads(out.read_text())
    (result,) = document["results"]
    assert result["server"] == "uvloop-raw" and result["requests"] > 0, result
    assert result["cpu_us_per_request"] > 0 and result["non_2xx"] == 0
    assert 0 < result["cpu_user_us_per_request"] < result["cpu_us_per_request"]
    assert 60 < result["bytes_per_request"] < 120  # status line, 2 headers, 14-byte body
    assert result["processes"] == 1
    assert "| uvloop-raw |" in capsys.readouterr().out


def test_interrupt_is_not_swallowed(tmp_path: Path) -> None:
    # The harness relies on `with Server(...)` for clean-up; make sure measure() lets
    # KeyboardInterrupt through rather than recording it as a skipped server.
    def launch(ctx: peers.Context, port: int, workers: int) -> peers.Launch:
        raise KeyboardInterrupt

    peer = peers.Peer("x", "hello", lambda ctx: None, launch)
    args = bench_http.parser().parse_args([])
    with pytest.raises(KeyboardInterrupt):
        bench_http.measure(peer, peers.Context(tmp_path, tmp_path), 1, args, 0)
