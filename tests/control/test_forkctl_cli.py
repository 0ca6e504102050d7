"""forkctl's command line: choosing the socket, exit codes, one-line errors, rendering."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from forkd import tapfile, testing
from forkd.app import Application
from forkd.cli import forkctl
from forkd.control.server import ControlServer
from forkd.testing import FakeMaster
from workers.echo import EchoFactory


@pytest.fixture
def running(tmp_path: Any) -> Iterator[tuple[FakeMaster, str]]:
    app = Application("app")
    app.tapfile = str(tmp_path / "app.tap")
    master = FakeMaster(app)
    app.listenTCP(0, EchoFactory(), interface="127.0.0.1")
    tapfile.save(app, app.tapfile)
    control = ControlServer(master, str(tmp_path / "app.ctl"))
    control.listen()
    with master.running():
        yield master, control.path
    control.close()
    for port in app.ports:
        port.stopListening()
    assert master.loop_errors == []


# -- choosing the socket --------------------------------------------------------------------
def test_explicit_socket_wins(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FORKD_CONTROL", "/env.ctl")
    assert forkctl.find_socket("/given.ctl", str(tmp_path)) == "/given.ctl"


def test_environment_next(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("FORKD_CONTROL", "/env.ctl")
    (tmp_path / "a.ctl").touch()
    assert forkctl.find_socket(None, str(tmp_path)) == "/env.ctl"


def test_the_only_ctl_in_the_directory(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("FORKD_CONTROL", raising=False)
    (tmp_path / "a.ctl").touch()
    assert forkctl.find_socket(None, str(tmp_path)) == str(tmp_path / "a.ctl")


def test_several_or_no_ctl_is_an_error_listing_them(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("FORKD_CONTROL", raising=False)
    with pytest.raises(forkctl.NoSocket, match="no \\*.ctl control socket here"):
        forkctl.find_socket(None, str(tmp_path))
    (tmp_path / "a.ctl").touch()
    (tmp_path / "b.ctl").touch()
    with pytest.raises(forkctl.NoSocket, match="several control sockets here \\(a.ctl, b.ctl\\)"):
        forkctl.find_socket(None, str(tmp_path))


# -- running commands -----------------------------------------------------------------------
def test_status_prints_a_table(running: tuple[FakeMaster, str], capsys: Any) -> None:
    _, path = running
    assert forkctl.main(["-c", path, "status"]) == 0
    out = capsys.readouterr().out
    assert f"master pid {os.getpid()}" in out and "WORKER" in out and "EchoFactory" in out


def test_status_json(running: tuple[FakeMaster, str], capsys: Any) -> None:
    import json

    _, path = running
    assert forkctl.main(["-c", path, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pid"] == os.getpid()


def test_error_is_one_line_on_stderr_and_exit_1(
    running: tuple[FakeMaster, str], capsys: Any
) -> None:
    master, path = running
    master.unsaved = True
    assert forkctl.main(["-c", path, "reload"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("forkctl: refusing")


def test_no_master_is_one_line(tmp_path: Any, capsys: Any) -> None:
    assert forkctl.main(["-c", str(tmp_path / "none.ctl"), "status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no control socket" in err


def test_append_and_remove_from_the_command_line(
    running: tuple[FakeMaster, str], capsys: Any
) -> None:
    master, path = running
    assert (
        forkctl.main(["-c", path, "append", "--no-save", "echo", "-p", "0", "-i", "127.0.0.1"]) == 0
    )
    out = capsys.readouterr().out
    assert "serving <workers.echo.EchoFactory on 127.0.0.1:" in out
    assert "every worker serves it after" in out and "not saved" in out
    key = master.application.ports[1].key
    assert forkctl.main(["-c", path, "remove", "--no-save", key]) == 0
    assert f"removed {key}" in capsys.readouterr().out


def test_append_tap_help(running: tuple[FakeMaster, str], capsys: Any) -> None:
    _, path = running
    assert forkctl.main(["-c", path, "append", "echo", "--help"]) == 0
    assert "Echo server" in capsys.readouterr().out


def test_scale_save_reopen_restart_stop(running: tuple[FakeMaster, str], capsys: Any) -> None:
    master, path = running
    assert forkctl.main(["-c", path, "scale", "+1"]) == 0
    assert forkctl.main(["-c", path, "save", "known-good"]) == 0
    assert forkctl.main(["-c", path, "reopen"]) == 0
    assert forkctl.main(["-c", path, "restart"]) == 0
    assert forkctl.main(["-c", path, "stop", "--now"]) == 0
    out = capsys.readouterr().out
    assert "target workers: 3" in out and "app-known-good.tap" in out
    assert "stopping now" in out
    for name in ("scale", "save", "reopen_logs", "restart", "stop"):
        assert name in master.names()


@pytest.mark.e2e
def test_forkctl_as_a_process(running: tuple[FakeMaster, str], tmp_path: Any) -> None:
    """The real executable path: exit codes and stderr from a separate process, with the
    socket found as the only *.ctl in the working directory."""
    ok = testing.forkctl(None, "status", cwd=tmp_path, timeout=30)
    assert ok.returncode == 0 and "WORKER" in ok.stdout, ok.stderr
    bad = testing.forkctl(None, "scale", "lots", cwd=tmp_path, timeout=30)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "forkctl: bad worker count 'lots': give N, +N or -N"
    usage = testing.forkctl(None, "frobnicate", cwd=tmp_path, timeout=30)
    assert usage.returncode == 2


# -- user errors: one line, the right exit (was: a traceback for --timeout -1) ------------
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_forkctl_bad_timeout_is_a_usage_error(value: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        forkctl.main(["--timeout", value, "-c", "/nonexistent.ctl", "status"])
    assert exited.value.code == 2
    assert "argument --timeout" in capsys.readouterr().err.strip().splitlines()[-1]


def test_forkctl_names_a_control_path_that_is_a_file_or_directory(
    tmp_path: Any, capsys: Any, monkeypatch: Any
) -> None:
    (tmp_path / "app.ctl").write_text("not a socket")
    assert forkctl.main(["-c", str(tmp_path / "app.ctl"), "status"]) == 1
    assert "app.ctl is not a control socket" in capsys.readouterr().err
    monkeypatch.setenv("FORKD_CONTROL", str(tmp_path))
    assert forkctl.main(["status"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"forkctl: $FORKD_CONTROL: {tmp_path} is a directory, not a control socket"


def test_forkctl_picks_the_only_socket_among_several_ctl_files(
    tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("FORKD_CONTROL", raising=False)
    (tmp_path / "copy.ctl").write_text("")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "web.ctl"))
        assert forkctl.find_socket(None, str(tmp_path)) == str(tmp_path / "web.ctl")


def test_append_takes_no_save_after_the_tap_options_too() -> None:
    """`forkctl append echo --port 9212 --no-save`: the flag is forkctl's (issue 9, item 14)."""
    from forkd.control.commands import append

    args = forkctl.parser().parse_args(["append", "echo", "--port", "9212", "--no-save"])
    assert append.request_args(args) == {
        "name": "echo",
        "options": ["--port", "9212"],
        "save": False,
    }
