"""Tests for the hosting suite of the benchmark (`bench_http.py --suite hosting`).

The command lines each peer gets, the suite's selection and usage errors, the docs
section it writes, the apps it serves and the profile's per-thread trunk are checked on
fixed inputs; one short end-to-end run (skipped without wrk) starts the real
`forkd serve` on the raw ASGI hello and writes its table into a copy of the docs. The peers
themselves (gunicorn, uvicorn, ...) are not needed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_http  # noqa: E402
from benchkit import docs, facts, hosting, peers, profile, report, suites  # noqa: E402
from benchkit.report import Measurement  # noqa: E402
from peers import asgi_json  # noqa: E402

DOCS = SCRIPTS.parent / "docs" / "BENCHMARKS.md"


def _peer(server: str, scenario: str) -> peers.Peer:
    (found,) = [p for p in hosting.PEERS if (p.server, p.scenario) == (server, scenario)]
    return found


def _argv(server: str, scenario: str, tmp_path: Path, workers: int = 2) -> list[str]:
    ctx = peers.Context(tmp_path, tmp_path / "static", venv=tmp_path / "venv")
    return _peer(server, scenario).launch(ctx, 9001, workers).argv


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- the peers' command lines ----------------------------------------------------------


def test_forkd_serve_runs_each_scenarios_app(tmp_path: Path) -> None:
    for scenario, (app, path, interface) in hosting.APPS.items():
        ctx = peers.Context(tmp_path, tmp_path / "static", venv=tmp_path / "venv")
        launch = _peer("forkd", scenario).launch(ctx, 9001, 2)
        argv = launch.argv
        assert argv[1:4] == ["-m", "forkd.cli.forkd", "serve"] and argv[4] == app
        assert _after(argv, "--bind") == "127.0.0.1:9001"
        assert _after(argv, "--workers") == "2" and _after(argv, "--threads") == "8"
        assert _after(argv, "--interface") == interface and launch.path == path
        assert _after(argv, "--pythonpath") == str(peers.PEER_APPS)
        assert launch.env["PYTHONPATH"] == str(peers.REPO)


def test_every_threaded_wsgi_server_gets_the_same_threads(tmp_path: Path) -> None:
    gthread = _argv("gunicorn-gthread", hosting.WSGI_HELLO, tmp_path)
    assert _after(gthread, "-k") == "gthread" and _after(gthread, "--threads") == "8"
    assert _after(_argv("waitress", hosting.WSGI_HELLO, tmp_path), "--threads") == "8"
    granian = _argv("granian", hosting.WSGI_HELLO, tmp_path)
    assert _after(granian, "--interface") == "wsgi"
    assert _after(granian, "--blocking-threads") == "8"
    assert "--threads" not in _argv("gunicorn-sync", hosting.WSGI_HELLO, tmp_path)


def test_asgi_peers_run_uvloop(tmp_path: Path) -> None:
    uvicorn = _argv("uvicorn", hosting.ASGI_JSON, tmp_path)
    assert uvicorn[1] == "asgi_json:app" and _after(uvicorn, "--loop") == "uvloop"
    assert _after(uvicorn, "--http") == "httptools" and "--no-access-log" in uvicorn
    granian = _argv("granian", hosting.ASGI_HELLO, tmp_path)
    assert _after(granian, "--interface") == "asgi" and _after(granian, "--loop") == "uvloop"
    hypercorn = _argv("hypercorn", hosting.ASGI_HELLO, tmp_path)
    assert _after(hypercorn, "--worker-class") == "uvloop"
    assert _after(hypercorn, "--workers") == "2"
    assert _argv("uvicorn", hosting.FASTAPI, tmp_path)[1] == "fastapi_json:app"
    assert _argv("gunicorn-gthread", hosting.FLASK, tmp_path)[-1] == "flask_json:app"


def test_gunicorn_asgi_worker_is_named_in_the_note(tmp_path: Path) -> None:
    # No venv here, so gunicorn's own ASGI worker cannot be found: the fallback is used
    # and the row says so.
    ctx = peers.Context(tmp_path, tmp_path / "static", venv=tmp_path / "no-venv")
    launch = _peer("gunicorn-asgi", hosting.ASGI_HELLO).launch(ctx, 9001, 1)
    assert _after(launch.argv, "-k") == "uvicorn.workers.UvicornWorker"
    assert "UvicornWorker" in launch.note
    assert "not installed" in (_peer("gunicorn-asgi", hosting.ASGI_HELLO).missing(ctx) or "")


def test_waitress_runs_one_process_only(tmp_path: Path) -> None:
    ctx = peers.Context(tmp_path, tmp_path / "static")
    assert _peer("waitress", hosting.WSGI_HELLO).max_workers(ctx) == 1
    assert _peer("forkd", hosting.WSGI_HELLO).max_workers(ctx) > 2


def test_each_scenario_has_forkd_and_the_peers_the_issue_names() -> None:
    by_scenario: dict[str, list[str]] = {}
    for peer in hosting.PEERS:
        by_scenario.setdefault(peer.scenario, []).append(peer.server)
    assert by_scenario == {
        "wsgi-hello": ["forkd", "gunicorn-sync", "gunicorn-gthread", "granian", "waitress"],
        "asgi-hello": ["forkd", "uvicorn", "granian", "hypercorn", "gunicorn-asgi"],
        "asgi-json": ["forkd", "uvicorn", "granian", "hypercorn", "gunicorn-asgi"],
        "flask": ["forkd", "gunicorn-gthread"],
        "fastapi": ["forkd", "uvicorn"],
    }


def test_asgi_json_body_is_10_kib_of_json() -> None:
    assert len(asgi_json.BODY) == 10 * 1024
    assert len(json.loads(asgi_json.BODY)["records"]) > 50
    assert asgi_json.document(2048) and len(asgi_json.document(2048)) == 2048


# --- the suite and the command ---------------------------------------------------------


def test_hosting_suite_selects_its_own_peers() -> None:
    suite = suites.SUITES["hosting"]
    chosen = suite.select(["forkd", "uvicorn"], [hosting.FASTAPI])
    assert [(p.server, p.scenario) for p in chosen] == [
        ("forkd", "fastapi"),
        ("uvicorn", "fastapi"),
    ]
    with pytest.raises(ValueError, match="unknown server"):
        suite.select(["nginx"], suite.scenarios)  # an http-suite peer, not a hosting one
    assert suite.forkd_peer(hosting.ASGI_HELLO) is not None
    assert hosting.WEBSOCKET_ECHO in suite.pending


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--suite", "hosting", "--scenarios", "hello"], "unknown scenario"),
        (["--suite", "hosting", "--only", "nginx"], "unknown server"),
        (["--scenarios", "asgi-hello"], "unknown scenario"),
        (["--suite", "hosting", "--docs", "/nonexistent/BENCHMARKS.md"], "--docs"),
    ],
)
def test_bad_usage_for_the_suite_exits_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_http.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_http.py: ") and says in err and len(err.splitlines()) == 1


def test_docs_without_the_suites_markers_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "B.md"
    page.write_text("# no markers here\n")
    assert bench_http.main(["--suite", "hosting", "--docs", str(page)]) == 2
    assert "no hosting-results markers" in capsys.readouterr().err


# --- the docs section ------------------------------------------------------------------


def test_the_marked_section_is_replaced_and_nothing_else() -> None:
    begin, end = docs.markers("hosting")
    text = f"before\n{begin}\nold table\n{end}\nafter\n"
    new = docs.replace_section(text, "hosting", "new table")
    assert new == f"before\n{begin}\nnew table\n{end}\nafter\n"
    assert docs.replace_section(new, "hosting", "again").count(begin) == 1
    with pytest.raises(ValueError, match="no http-results markers"):
        docs.replace_section(text, "http", "x")


def test_the_real_docs_page_has_the_hosting_markers() -> None:
    assert docs.replace_section(DOCS.read_text(), "hosting", "x").count("x\n<!-- hosting") == 1


def _document() -> dict[str, object]:
    return {
        "command": ["python3", "scripts/bench_http.py", "--suite", "hosting", "--docs"],
        "date": "2026-01-02 03:04 UTC",
        "run": {"duration": 5.0, "warmup": 1.0, "rounds": 3},
        "wrk": ["wrk", "-t1", "-c50", "-d5s"],
        "machine": {
            "cpus": 2,
            "cpu_model": "Some CPU",
            "python": "3.11.7",
            "platform": "Linux",
            "uptime": "load average: 1.00, 0.50, 0.25",
        },  # fmt: skip
        "uptime_after": "load average: 1.50, 0.60, 0.30",
        "versions": {
            "wrk": "wrk 4.1.0",
            "forkd": "abc1234",
            "forkd_python": {"uvloop": "0.23.0"},
            "peers_venv": "/venv",
            "peers": {"gunicorn": "27.0.1", "granian": "2.8.9"},
        },  # fmt: skip
        "elapsed_seconds": 123.4,
        "targets": ["asgi-hello -w1: forkd 1.40x uvicorn req/s (target >= 1.3x): met"],
        "profile": ["py-spy: 10 busy samples"],
        "warning": "warning: load average 3.30 on 2 CPUs before the run",
    }


def test_section_states_command_machine_versions_and_tables() -> None:
    results = [
        Measurement("forkd", "asgi-hello", 1, requests_per_second=2000, requests=10000,
                    cpu_seconds=0.2, cpu_user_seconds=0.1),
        Measurement("uvicorn", "asgi-hello", 1, requests_per_second=1000, requests=5000,
                    cpu_seconds=0.2, cpu_user_seconds=0.1),
        Measurement("waitress", "wsgi-hello", 2, skipped="runs 1 worker(s) only"),
    ]  # fmt: skip
    text = docs.section(_document(), results, hosting.SCENARIOS, hosting.PENDING)
    assert "    python3 scripts/bench_http.py --suite hosting --docs" in text
    assert "2026-01-02 03:04 UTC" in text and "2 CPUs (Some CPU)" in text
    assert "load average: 1.00, 0.50, 0.25" in text and "load average: 1.50" in text
    assert "gunicorn 27.0.1, granian 2.8.9" in text and "commit abc1234" in text
    assert "median of 3 round(s)" in text
    assert "**warning: load average 3.30 on 2 CPUs before the run.**" in text
    # one table per scenario that ran, in the suite's order, then the pending hook
    assert text.index("#### wsgi-hello") < text.index("#### asgi-hello") < text.index("ws-echo")
    assert "#### flask" not in text
    assert "| asgi-hello | 1 | uvicorn | 1,000 | 2.00x | 40.0 (20.0+20.0) | 2.00x |" in text
    assert "skipped: runs 1 worker(s) only" in text
    assert "scripts/bench_websocket.py" in text
    assert "- asgi-hello -w1: forkd 1.40x uvicorn" in text and "    py-spy: 10" in text


def test_hosting_floors_are_the_issues() -> None:
    floors = {(t.scenario, t.peer): t.factor for t in hosting.TARGETS}
    assert floors == {
        ("asgi-hello", "uvicorn"): 1.3,
        ("asgi-hello", "granian"): 1.0,
        ("wsgi-hello", "gunicorn-gthread"): 3.0,
    }
    results = [
        Measurement("forkd", "wsgi-hello", 1, requests_per_second=900, requests=900,
                    cpu_seconds=0.09),
        Measurement("gunicorn-gthread", "wsgi-hello", 1, requests_per_second=300,
                    requests=300, cpu_seconds=0.12),
    ]  # fmt: skip
    (line,) = report.target_lines(results, hosting.TARGETS)
    assert "3.00x gunicorn-gthread req/s (target >= 3.0x): met" in line
    assert "CPU/request ratio 4.00x (at equal CPU: met)" in line


def test_table_follows_the_suites_scenario_order() -> None:
    results = [
        Measurement("forkd", "fastapi", 1, requests_per_second=1, requests=1),
        Measurement("forkd", "wsgi-hello", 1, requests_per_second=1, requests=1),
    ]
    rows = report.table(results, hosting.SCENARIOS).splitlines()[2:]
    assert rows[0].startswith("| wsgi-hello") and rows[1].startswith("| fastapi")


# --- facts and the profile -------------------------------------------------------------


def test_package_versions_of_this_interpreter() -> None:
    found = facts.package_versions(sys.executable, ["pytest", "no-such-package-here"])
    assert list(found) == ["pytest"] and found["pytest"] == pytest.__version__
    assert facts.package_versions("/nonexistent/python", ["pytest"]) == {}


def test_profile_trunk_is_found_per_thread() -> None:
    # A threaded (WSGI) server: the main thread's trunk is in every main-thread sample but
    # in only half of all samples; it is trunk all the same, and so is the pool thread's.
    collapsed = (
        "main (m.py:1);loop (m.py:2);render (w.py:3) 3\n"
        "main (m.py:1);loop (m.py:2);parse (c.py:7) 2\n"
        "boot (threading.py:1);work (futures.py:2);app (a.py:3) 4\n"
        "boot (threading.py:1);work (futures.py:2);submit (futures.py:9) 1\n"
    )
    inclusive = dict(profile.summarise(collapsed).inclusive)
    assert set(inclusive) == {"render (w.py)", "parse (c.py)", "app (a.py)", "submit (futures.py)"}
    assert inclusive["render (w.py)"] == pytest.approx(30.0)  # shares stay of all samples


# --- end to end ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_short_hosting_run_writes_the_docs(tmp_path: Path) -> None:
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(DOCS.read_text())
    out = tmp_path / "r.json"
    argv = ["--suite", "hosting", "--only", "forkd", "--scenarios", "asgi-hello",
            "--workers", "1", "--duration", "1", "--warmup", "0",
            "--json", str(out), "--docs", str(page)]  # fmt: skip
    assert bench_http.main(argv) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["server"] == "forkd" and result["requests"] > 0, result
    assert result["non_2xx"] == 0 and result["cpu_us_per_request"] > 0
    assert result["processes"] == 2  # forkd serve's master and its one worker
    assert 100 < result["bytes_per_request"] < 200  # status line, 4 headers, 14-byte body
    text = page.read_text()
    section = text.split("hosting-results:begin")[1].split("hosting-results:end")[0]
    assert "| asgi-hello | 1 | forkd |" in section and "ws-echo" in section
    assert (
        text.split("hosting-results:begin")[0] == DOCS.read_text().split("hosting-results:begin")[0]
    )


def test_a_peer_whose_check_fails_is_skipped_not_crashed(tmp_path: Path) -> None:
    def missing(ctx: peers.Context) -> str | None:
        raise RuntimeError("`import uvicorn` in /venv/bin/python took over 60 s")

    peer = peers.Peer("uvicorn", hosting.ASGI_HELLO, missing, _peer("uvicorn", "asgi-hello").launch)
    args = bench_http.parser().parse_args([])
    result = bench_http.measure(peer, peers.Context(tmp_path, tmp_path), 1, args, 0)
    assert not result.ok and result.skipped.startswith("failed: `import uvicorn`")


def test_the_recorded_command_names_the_peers_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORKD_BENCH_VENV", str(tmp_path))
    assert bench_http.venv_setting(tmp_path) == [f"FORKD_BENCH_VENV={tmp_path}"]
    assert bench_http.venv_setting(tmp_path / "other") == []  # --venv said otherwise
    monkeypatch.delenv("FORKD_BENCH_VENV")
    assert bench_http.venv_setting(peers.BENCH_VENV) == []
