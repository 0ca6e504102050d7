"""User errors in mktap, forkd stop/status and forkctl: one line, the right exit, no data lost.

Each case here was a bug found by using the tools: a tap module's garbage written into a tap
or reported as a bare unpacking error, a read-only tap or a non-tap file overwritten, a
foreign process signalled through a pidfile, a traceback for `forkctl --timeout -1`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from forkd.cli import forkctl
from forkd.cli import forkd as forkd_cli

TAP_HEAD = "from forkd import usage\nfrom forkd.protocol import Factory\n"


def mktap(cwd: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """mktap as a process run in `cwd`, with `cwd` importable (for the test's tap modules)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), *sys.path]))
    return subprocess.run(
        [sys.executable, "-m", "forkd.cli.mktap", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "raise RuntimeError('at import')\n",
            "mktap: tap module 'brokentap' does not import: RuntimeError: at import",
        ),
        (
            "class Options(usage.Options):\n"
            "    def __init__(self): raise ValueError('no options')\n"
            "def getPorts(app, config): return []\n",
            "mktap: tap module 'brokentap': its Options cannot be created: ValueError: no options",
        ),
        (
            "class Options(usage.Options): pass\ndef getPorts(app, config): return [(1, 2, 3)]\n",
            "mktap: brokentap.getPorts item 0 is not a (port, factory) pair: 3 items",
        ),
        (
            "class Options(usage.Options): pass\n"
            "def getPorts(app, config): return [(8080, None)]\n",
            "mktap: brokentap.getPorts item 0: None is not a factory",
        ),
        (
            "class Options(usage.Options): pass\n"
            "def getPorts(app, config): return [(99999, Factory())]\n",
            "mktap: bad TCP port 99999: a port is a number from 0 to 65535",
        ),
        (
            "class Options(usage.Options): pass\n"
            "class F(Factory):\n"
            "    def __init__(self): self.on_error = lambda: None\n"
            "def getPorts(app, config): return [(8080, F())]\n",
            "mktap: cannot pickle application.ports[0].factory.on_error: ",
        ),
    ],
)
def test_a_broken_tap_module_is_one_line_and_writes_nothing(
    tmp_path: Any, body: str, message: str
) -> None:
    (tmp_path / "brokentap.py").write_text(TAP_HEAD + body)
    done = mktap(tmp_path, "brokentap")
    assert done.returncode == 1
    assert one_line(done).startswith(message)
    assert not (tmp_path / "brokentap.tap").exists()


def test_append_refuses_a_read_only_tap_and_leaves_it_alone(tmp_path: Any) -> None:
    assert mktap(tmp_path, "echo", "--port", "9001").returncode == 0
    tap = tmp_path / "echo.tap"
    before = tap.read_bytes()
    tap.chmod(0o444)
    done = mktap(tmp_path, "--append", "echo.tap", "echo", "--port", "9002")
    assert done.returncode == 1
    assert "the tap file is read-only (mode 444)" in one_line(done)
    assert tap.read_bytes() == before


def test_output_never_overwrites_a_file_that_is_not_a_tap(tmp_path: Any) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    done = mktap(tmp_path, "-o", "notes.txt", "echo")
    assert done.returncode == 1
    assert "notes.txt exists and is not a tap file; not overwriting it" in one_line(done)
    assert (tmp_path / "notes.txt").read_text() == "precious"
    (tmp_path / "empty.tap").write_bytes(b"")
    assert mktap(tmp_path, "-o", "empty.tap", "echo").returncode == 0


def test_output_into_a_missing_directory_is_one_line(tmp_path: Any) -> None:
    done = mktap(tmp_path, "-o", "missing/x.tap", "echo")
    assert done.returncode == 1
    assert one_line(done) == "mktap: cannot write missing/x.tap: No such file or directory"


# -- forkd stop/status through a pidfile ----------------------------------------------------
@pytest.fixture
def foreign_locked_pidfile(tmp_path: Any) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A process that is not forkd, holding a locked pidfile with its own pid (as crond or
    any daemon does): `forkd stop --pidfile` pointed there must not signal it."""
    path = str(tmp_path / "other.pid")
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({path!r}, os.O_RDWR | os.O_CREAT)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.write(fd, b"%d\\n" % os.getpid())
        open({str(ready)!r}, "w").close()
        sys.stdin.read()
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        from forkd.testing import wait_for

        wait_for(ready.exists, 10, message="the other process to lock its pidfile")
        yield path, process
    finally:
        process.kill()
        process.wait(10)


@pytest.mark.parametrize("command", ["stop", "status"])
def test_stop_and_status_never_signal_a_process_that_is_not_forkd(
    foreign_locked_pidfile: tuple[str, subprocess.Popen[bytes]],
    tmp_path: Any,
    capsys: Any,
    command: str,
) -> None:
    path, process = foreign_locked_pidfile
    code = forkd_cli.main([command, str(tmp_path / "app.tap"), "--pidfile", path])
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"forkd: {path} names pid {process.pid}, which is not forkd")
    assert process.poll() is None  # still alive: not signalled


def test_stop_on_a_tap_that_is_not_running(tmp_path: Any, capsys: Any) -> None:
    (tmp_path / "app.pid").write_text(f"{os.getpid()}\n")  # stale: nobody holds the lock
    assert forkd_cli.main(["stop", str(tmp_path / "app.tap")]) == 1
    assert capsys.readouterr().err.strip() == "forkd: app.tap is not running"


# -- forkctl ------------------------------------------------------------------------------
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
