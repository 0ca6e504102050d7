"""End-to-end: the control plane when the files under a running master change or vanish,
and when clients crowd it or die mid-request (real `forkd start`, real `forkctl`)."""

from __future__ import annotations

import io
import os
import pathlib
import signal
import subprocess
import sys
import threading

import probetap
import pytest

from forkd import tapfile
from forkd.cli import shell_client
from forkd.control.client import Connection, request
from forkd.testing import RunningForkd, forkd_command, forkd_env, free_port, wait_for
from tests import TAP_MODULES_DIR

pytestmark = pytest.mark.timeout(60)


def forkctl(ctl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forkd.cli.forkctl", "-c", ctl, *args],
        env=forkd_env([TAP_MODULES_DIR]),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("damage", ["delete", "world-writable", "garbage", "newer", "empty"])
def test_damaged_tap_reload_and_save(tmp_path: pathlib.Path, damage: str) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        workers = forkd.wait_workers(1)
        if damage == "delete":
            os.unlink(tap)
        elif damage == "world-writable":
            os.chmod(tap, 0o666)
        elif damage == "garbage":
            pathlib.Path(tap).write_bytes(b"\x00garbage" * 10)
        elif damage == "empty":
            pathlib.Path(tap).write_bytes(b"")
        else:
            data = pathlib.Path(tap).read_bytes()
            header = tapfile.header()
            assert data.startswith(header)
            pathlib.Path(tap).write_bytes(header.replace(b"1", b"9", 1) + data[len(header) :])
        failed = forkctl(ctl, "reload")
        assert failed.returncode != 0
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert "Traceback" not in failed.stderr
        assert forkd.worker_pids() == workers
        assert probetap.ask(port, "hi") == "hi"
        saved = forkctl(ctl, "save")
        assert saved.returncode == 0, saved.stderr
        assert probetap.ports_of(tapfile.load(tap)) == [f"tcp:127.0.0.1:{port}"]
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr


def test_control_socket_deleted_under_the_master(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        os.unlink(ctl)
        status = forkctl(ctl, "status")
        assert status.returncode != 0 and len(status.stderr.strip().splitlines()) == 1
        assert "Traceback" not in status.stderr
        # the master binds it again: forkctl works without a restart
        wait_for(
            lambda: forkctl(ctl, "status").returncode == 0,
            timeout=10,
            message="the control socket to come back",
        )
        assert os.stat(ctl).st_mode & 0o777 == 0o600
        fstatus = subprocess.run(
            forkd_command("status", tap),
            env=forkd_env([TAP_MODULES_DIR]),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "Traceback" not in fstatus.stderr
        # the test is the master's parent: reap it, or `forkd stop` would wait on a zombie
        stop = subprocess.Popen(
            forkd_command("stop", tap),
            env=forkd_env([TAP_MODULES_DIR]),
            stderr=subprocess.PIPE,
            text=True,
        )
        assert forkd.process.wait(20) == 0, forkd.log()
        assert stop.wait(20) == 0, stop.communicate()[1]
        assert "Traceback" not in forkd.log()


def test_fifty_concurrent_status_clients(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        results: list[object] = []
        lock = threading.Lock()

        def one() -> None:
            try:
                value: object = request(ctl, "status", timeout=30)["pid"]
            except Exception as error:
                value = error
            with lock:
                results.append(value)

        threads = [threading.Thread(target=one) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)
        assert results == [forkd.pid] * 50, results


def test_client_killed_mid_reload(tmp_path: pathlib.Path) -> None:
    port = free_port()
    hold = str(tmp_path / "hold")
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port, hold_flag=hold)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(1)
        pathlib.Path(hold).touch()
        client = subprocess.Popen(
            [sys.executable, "-m", "forkd.cli.forkctl", "-c", ctl, "reload"],
            env=forkd_env([TAP_MODULES_DIR]),
        )
        wait_for(lambda: len(forkd.worker_pids()) == 2, message="new generation forked")
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        os.unlink(hold)
        forkd.wait_workers(1, exclude=first)
        assert request(ctl, "status")["generation"] == 2
        assert forkd.process.poll() is None


def test_client_gone_before_reload_refusal_reply(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        for _ in range(5):
            connection = Connection(ctl, 5)
            connection.sock.sendall(
                b"\x00\x00\x00\x3f"
                + b'{"version": 1, "id": 1, "command": "reload", "args": {}}'.ljust(63)
            )
            connection.close()
        assert request(ctl, "status")["pid"] == forkd.pid


def test_shell_session_survives_restart_and_reload(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(1)
        out = io.StringIO()
        lines = ["x = 41", "after_restart", "after_reload", "x = 1", "x + 1"]

        def read(prompt: str) -> str:
            if not lines:
                raise EOFError
            line = lines.pop(0)
            if line == "after_restart":
                assert forkctl(ctl, "restart").returncode == 0
                forkd.wait_workers(1, exclude=first)
                return "x + 1"
            if line == "after_reload":
                assert forkctl(ctl, "reload").returncode == 0
                return "x + 1"
            return line

        assert shell_client.interact(ctl, read=read, out=out, timeout=30) == 0
        text = out.getvalue()
        assert "42" in text  # the session outlived the restart
        assert "new shell session" in text and "Traceback" not in text
        assert text.rstrip().endswith("2"), text
