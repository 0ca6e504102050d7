"""The master side of live changes (add/remove port, restart, reload, scale) driven through
the control socket, with real processes. forkctl's own end-to-end tests live elsewhere."""

from __future__ import annotations

import pathlib
import socket
import subprocess

import probetap
import pytest

from forkd.app import Application
from forkd.ports import TCPPort
from forkd.testing import RunningForkd, forkctl, free_port, refused, wait_for
from tests import TAP_MODULES_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def test_add_remove_restart_reload_scale(tmp_path: pathlib.Path) -> None:
    port, extra = free_port(), free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=2, extra_paths=[TAP_MODULES_DIR]) as forkd:
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
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        workers = forkd.wait_workers(1)
        probetap.make_tap(tap, port, fail="broken")
        failed = forkctl(ctl, "reload")
        assert failed.returncode != 0 and "ValueError: broken" in failed.stderr
        assert forkd.worker_pids() == workers


def test_reload_binds_ports_new_on_disk_and_closes_ports_gone(tmp_path: pathlib.Path) -> None:
    kept, gone, new = free_port(), free_port(), free_port()
    tap = str(tmp_path / "probe.tap")

    def write_tap(ports: list[int]) -> None:
        application = Application("probe")
        for port in ports:
            application.addPort(TCPPort(port, probetap.ProbeFactory(), interface="127.0.0.1"))
        application.tapfile = tap
        application.save()

    write_tap([kept, gone])
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=2, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(2)
        assert probetap.ask(gone, "pid") in {str(pid) for pid in first}
        write_tap([kept, new])  # what an operator does with mktap, then reloads
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        second = forkd.wait_workers(2, exclude=first)
        assert probetap.ask(new, "pid") in {str(pid) for pid in second}
        assert probetap.ask(kept, "pid") in {str(pid) for pid in second}
        wait_for(lambda: refused(gone), message=f"port {gone} closed after the reload")
        status = forkctl(ctl, "status").stdout
        assert f"tcp:127.0.0.1:{new}" in status and f"tcp:127.0.0.1:{gone}" not in status


def test_ports_do_not_change_in_the_middle_of_a_rollout(tmp_path: pathlib.Path) -> None:
    """Workers forked before and after a port change would disagree on what they serve;
    forkd refuses the change until the restart has finished, then takes it."""
    import threading

    port, extra = free_port(), free_port()
    hold = tmp_path / "hold"
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port, hold_flag=str(hold))
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(1)
        hold.touch()  # the next generation will wait in startFactory
        restart: dict[str, subprocess.CompletedProcess[str]] = {}
        thread = threading.Thread(target=lambda: restart.update(done=forkctl(ctl, "restart")))
        thread.start()
        try:
            forkd.wait_workers(2)  # the new worker is booting, the old one serving
            refused = forkctl(
                ctl, "append", "echo", "--port", str(extra), "--interface", "127.0.0.1"
            )
            assert refused.returncode == 1
            assert "while a restart or reload is in progress" in refused.stderr
            assert refused.stderr.count("\n") == 1
            refused = forkctl(ctl, "remove", f"tcp:127.0.0.1:{port}")
            assert refused.returncode == 1 and "in progress" in refused.stderr
        finally:
            hold.unlink()
            thread.join(60)
        assert restart["done"].returncode == 0, restart["done"].stderr
        forkd.wait_workers(1, exclude=first)
        added = forkctl(ctl, "append", "echo", "--port", str(extra), "--interface", "127.0.0.1")
        assert added.returncode == 0, added.stderr
        with socket.create_connection(("127.0.0.1", extra), timeout=5) as sock:
            sock.sendall(b"after")
            assert sock.recv(5) == b"after"
