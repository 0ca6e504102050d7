"""--log-format json: every line of the master's and the workers' log is one JSON object,
tracebacks included, and a worker's boot failure is logged whole."""

from __future__ import annotations

import json
import pathlib
import urllib.error
import urllib.request

import pytest

from forkd.testing import RunningForkd, free_port, make_tap, run_forkd, wait_for

pytestmark = [pytest.mark.e2e]

APP = """
def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("the application broke\\nwith a second line")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fine"]
"""


def lines(path: pathlib.Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_logs_parse_line_by_line_with_tracebacks_inside(tmp_path: pathlib.Path) -> None:
    (tmp_path / "jsonapp.py").write_text(APP)
    port = free_port()
    tap = make_tap(
        tmp_path / "jsonapp.tap",
        "wsgi",
        *("--app", "jsonapp:app", "--port", str(port), "--pythonpath", str(tmp_path)),
        "--no-preload",  # so a broken import below fails in the worker, at its boot
    )
    log = tmp_path / "forkd.log"
    with RunningForkd(tap, "--log-format", "json", "-l", str(log), workers=1):
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/boom", timeout=10)
        assert failed.value.code == 500
        entry = wait_for(
            lambda: [e for e in lines(log) if "the application broke" in str(e.get("traceback"))],
            message="the application's traceback in the log",
        )[0]
        assert entry["level"] == "ERROR" and str(entry["role"]).startswith("worker")
        assert isinstance(entry["pid"], int)
    roles = {str(e["role"]) for e in lines(log)}
    assert "master" in roles and any(role.startswith("worker") for role in roles)

    (tmp_path / "jsonapp.py").write_text("import nowhere_to_be_found\n")
    failed_start = run_forkd(
        "start", tap, "-n", "--no-save", "-w", "1", "--log-format", "json", "-l", str(log)
    )
    assert failed_start.returncode != 0
    assert "nowhere_to_be_found" in failed_start.stderr
    assert len(failed_start.stderr.strip().splitlines()) == 1, "the start says one line"
    [boot] = [e for e in lines(log) if str(e["message"]).startswith("boot failed")]
    assert "Traceback" in str(boot["traceback"]) and "import nowhere_to_be_found" in str(
        boot["traceback"]
    ), "the worker logs the whole traceback"
