"""End-to-end: the control plane against the tap file and the in-memory application, as an
operator meets them (real `forkd start`, real `forkctl`, 127.0.0.1)."""

from __future__ import annotations

import os
import pathlib

import probetap
import pytest

from forkd import tapfile
from forkd.control.client import request
from forkd.testing import RunningForkd, forkctl, free_port, mktap
from tests import TAP_MODULES_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def shell(ctl: str, source: str) -> str:
    return str(request(ctl, "shell", {"source": source})["output"])


def disk_ports(tap: str) -> list[str]:
    return sorted(probetap.ports_of(tapfile.load(tap)))


def live_ports(ctl: str) -> list[str]:
    return sorted(port["key"] for port in request(ctl, "status")["ports"])


def test_append_then_mktap_append_by_hand_then_reload_keeps_both(tmp_path: pathlib.Path) -> None:
    port, live, by_hand = free_port(), free_port(), free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]):
        added = forkctl(ctl, "append", "echo", "--port", str(live), "--interface", "127.0.0.1")
        assert added.returncode == 0, added.stderr
        appended = mktap(
            "--append",
            tap,
            "echo",
            "--port",
            str(by_hand),
            "--interface",
            "127.0.0.1",
            extra_paths=[TAP_MODULES_DIR],  # the tap names probetap's classes
        )
        assert appended.returncode == 0, appended.stderr
        assert len(disk_ports(tap)) == 3
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        keys = live_ports(ctl)
        assert len(keys) == 3 and len(set(keys)) == 3, keys
        assert disk_ports(tap) == keys


def test_no_save_append_is_gone_after_reload_and_save_writes_what_serves(
    tmp_path: pathlib.Path,
) -> None:
    port, extra = free_port(), free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]):
        added = forkctl(
            ctl, "append", "--no-save", "echo", "--port", str(extra), "--interface", "127.0.0.1"
        )
        assert added.returncode == 0, added.stderr
        assert "not saved" in added.stdout
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert live_ports(ctl) == [f"tcp:127.0.0.1:{port}"]
        saved = forkctl(ctl, "save")
        assert saved.returncode == 0, saved.stderr
        assert disk_ports(tap) == [f"tcp:127.0.0.1:{port}"]


def test_remove_last_port(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        removed = forkctl(ctl, "remove", f"tcp:127.0.0.1:{port}")
        assert removed.returncode == 0, removed.stderr
        assert live_ports(ctl) == [] and disk_ports(tap) == []
        assert forkctl(ctl, "status").returncode == 0
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert forkd.process.poll() is None


def test_save_tag_then_start_it_elsewhere(tmp_path: pathlib.Path) -> None:
    port, extra = free_port(), free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]):
        assert (
            forkctl(
                ctl, "append", "--no-save", "echo", "--port", str(extra), "--interface", "127.0.0.1"
            ).returncode
            == 0
        )
        saved = forkctl(ctl, "save", "known-good")
        assert saved.returncode == 0, saved.stderr
        tagged = str(tmp_path / "probe-known-good.tap")
        assert saved.stdout.strip() == f"saved {tagged}"
        assert disk_ports(tap) == [f"tcp:127.0.0.1:{port}"]
    other = tmp_path / "other"
    other.mkdir()
    moved = str(other / "moved.tap")
    os.rename(tagged, moved)
    with RunningForkd(moved, workers=1, extra_paths=[TAP_MODULES_DIR]):
        assert probetap.ask(port, "hi") == "hi"
        assert os.path.exists(str(other / "moved.ctl"))
        saved = forkctl(str(other / "moved.ctl"), "save")
        assert saved.returncode == 0 and saved.stdout.strip() == f"saved {moved}", saved


def test_unsaved_edit_guard(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(1)
        out = shell(ctl, "application.ports[0].factory.greeting = 'edited'")
        assert "rolling restart" in out
        second = forkd.wait_workers(1, exclude=first)
        refused = forkctl(ctl, "reload")
        assert refused.returncode != 0 and "unsaved" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert forkctl(ctl, "save").returncode == 0
        assert tapfile.load(tap).ports[0].factory.greeting == "edited"
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        forkd.wait_workers(1, exclude=second)
        assert shell(ctl, "application.ports[0].factory.greeting").strip() == "'edited'"


def test_reload_discard_drops_the_edit(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(1)
        shell(ctl, "application.ports[0].factory.greeting = 'edited'")
        second = forkd.wait_workers(1, exclude=first)
        reloaded = forkctl(ctl, "reload", "--discard")
        assert reloaded.returncode == 0, reloaded.stderr
        forkd.wait_workers(1, exclude=second)
        assert "greeting" not in shell(ctl, "vars(application.ports[0].factory)")
        assert request(ctl, "status")["unsaved"] is False


def test_shell_save_clears_the_guard(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]):
        shell(ctl, "application.ports[0].factory.greeting = 'edited'")
        assert request(ctl, "status")["unsaved"] is True
        shell(ctl, "application.save()")
        assert request(ctl, "status")["unsaved"] is False
        shell(ctl, "application.ports[0].factory.greeting = 'again'")
        shell(ctl, "import __main__; __main__.application.save('tagged')")
        assert request(ctl, "status")["unsaved"] is True


def test_stop_after_shell_edit_writes_shutdown_tap_only(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        shell(ctl, "application.ports[0].factory.greeting = 'edited'")
        assert forkctl(ctl, "stop").returncode == 0
        forkd.process.wait(20)
    shutdown = tapfile.load(str(tmp_path / "probe-shutdown.tap"))
    assert shutdown.ports[0].factory.greeting == "edited"
    assert "greeting" not in vars(tapfile.load(tap).ports[0].factory)
