"""User errors in `forkd stop` and `forkd status` through a pidfile: one line, the right
exit, and no process signalled that is not forkd (a bug found by using the tools)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from forkd.cli import forkd as forkd_cli
from forkd.testing import wait_for


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


def test_an_unknown_option_gets_its_commands_usage(capsys: Any) -> None:
    """`forkd start --bogus` showed the top-level usage, which lists no start options."""
    with pytest.raises(SystemExit) as exited:
        forkd_cli.main(["start", "app.tap", "--bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: forkd start ") and "--graceful-timeout" in err
    assert err.strip().endswith("forkd start: error: unrecognized arguments: --bogus")
