"""The master side of live changes (add/remove port, restart, reload, scale) driven through
the control socket, with real processes. forkctl's own end-to-end tests live elsewhere."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

import probetap
import pytest

from forkd.testing import RunningForkd, forkd_env, free_port

TESTS = str(pathlib.Path(__file__).resolve().parent)
pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        not (pathlib.Path(TESTS).parent / "forkd/cli/forkctl.py").exists(), reason="no forkctl"
    ),
]


def forkctl(ctl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forkd.cli.forkctl", "-c", ctl, *args],
                          env=forkd_env([TESTS]), capture_output=True, text=True, timeout=60)


def test_add_remove_restart_reload_scale(tmp_path: pathlib.Path) -> None:
    port, extra = free_port(), free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=2, extra_paths=[TESTS]) as forkd:
        first = forkd.wait_workers(2)
        added = forkctl(ctl, "append", "echo", "--port", str(extra), "--interface", "127.0.0.1")
        assert added.returncode == 0, added.stderr
        with socket.create_connection(("127.0.0.1", extra), timeout=5) as sock:
            sock.sendall(b"live")
            assert sock.recv(4) == b"live"
        assert forkd.worker_pids() == first  # no worker restarted for the new port
        removed = forkctl(ctl, "remove", f"tcp:127.0.0.1:{extra}")
        assert removed.returncode == 0, removed.stderr
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", extra), timeout=5).close()
        assert forkctl(ctl, "restart").returncode == 0
        second = forkd.wait_workers(2, exclude=first)
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        third = forkd.wait_workers(2, exclude=second)
        assert probetap.ask(port, "pid") in {str(pid) for pid in third}
        assert forkctl(ctl, "scale", "3").returncode == 0
        forkd.wait_workers(3)
        assert forkd.process.poll() is None  # same master pid throughout


def test_reload_reports_validation_errors_to_the_client(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TESTS]) as forkd:
        workers = forkd.wait_workers(1)
        probetap.make_tap(tap, port, fail="broken")
        failed = forkctl(ctl, "reload")
        assert failed.returncode != 0 and "ValueError: broken" in failed.stderr
        assert forkd.worker_pids() == workers
