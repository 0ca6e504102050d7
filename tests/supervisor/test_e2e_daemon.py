"""`forkd start` as an operator meets it: the daemon's process state and files, the
pidfile race, systemd's notify protocol across a reload, Ctrl-C in the foreground."""

from __future__ import annotations

import contextlib
import os
import pathlib
import select
import signal
import socket
import subprocess
from typing import Any

import pytest

from forkd.supervisor import pidfile as pidfile_module
from forkd.supervisor.pidfile import PidFile, read_pid
from forkd.testing import (
    forkctl,
    forkd_command,
    forkd_env,
    free_port,
    make_tap,
    run_forkd,
    wait_for,
)
from tests import TAP_MODULES_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def echo_tap(directory: pathlib.Path) -> tuple[str, int]:
    port = free_port()
    tap = make_tap(directory / "echo.tap", "echo", "--port", str(port), "--interface", "127.0.0.1")
    return tap, port


def echo_once(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        return sock.recv(4)


def test_log_to_stderr_as_a_daemon_is_refused(tmp_path: pathlib.Path) -> None:
    """A daemon keeping the caller's stderr would hang `out=$(forkd start ... 2>&1)`."""
    tap, _ = echo_tap(tmp_path)
    result = run_forkd("start", tap, "-w", "1", "-l", "-")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "needs -n" in result.stderr
    assert not (tmp_path / "echo.pid").exists()


def test_daemon_detaches_and_keeps_no_descriptor_of_its_caller(tmp_path: pathlib.Path) -> None:
    tap, port = echo_tap(tmp_path)
    read_end, write_end = os.pipe()
    try:
        started = subprocess.run(
            forkd_command("start", tap, "-w", "1"),
            env=forkd_env(),
            pass_fds=(write_end,),
            capture_output=True,
            text=True,
            timeout=30,
        )
        os.close(write_end)
        assert started.returncode == 0, started.stderr
        pid = read_pid(str(tmp_path / "echo.pid"))
        assert pid is not None
        # one line on success: what serves, and the master's pid (issue 9, item 17)
        assert started.stdout == (
            f"forkd: serving {tap} (pid {pid}): tcp:127.0.0.1:{port}, 1 worker(s)\n"
        )
        try:
            assert echo_once(port) == b"ping"
            # whoever waits on a pipe it handed to `forkd start` sees EOF once start returns
            readable, _, _ = select.select([read_end], [], [], 5)
            assert readable and os.read(read_end, 10) == b"", "the daemon kept the caller's fd"
            proc = pathlib.Path(f"/proc/{pid}")
            assert os.readlink(proc / "fd/0") == os.devnull
            log = str(tmp_path / "echo.log")
            assert os.readlink(proc / "fd/1") == log and os.readlink(proc / "fd/2") == log
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            session, tty = int(fields[3]), int(fields[4])
            assert tty == 0 and session != pid  # no terminal, and can never acquire one
            assert "Umask:\t0022" in (proc / "status").read_text()
            text = pathlib.Path(log).read_text()
            assert f"[{pid}] [master]" in text and "] [worker 1] " in text
        finally:
            stopped = run_forkd("stop", tap)
        assert stopped.returncode == 0, stopped.stderr
        assert not (tmp_path / "echo.pid").exists()
    finally:
        os.close(read_end)


def test_a_pidfile_removed_before_it_is_locked_is_taken_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopping master unlinks its pidfile between a new start's open and lock: the new
    master must lock the file that is there, not the dead inode (or two masters run)."""
    path = str(tmp_path / "app.pid")
    real_lockf = pidfile_module.fcntl.lockf
    removed = []

    def lockf_after_removal(fd: int, cmd: int) -> Any:
        if not removed:
            removed.append(True)
            os.unlink(path)  # what the old master's release() does
        return real_lockf(fd, cmd)

    monkeypatch.setattr(pidfile_module.fcntl, "lockf", lockf_after_removal)
    held = PidFile(path)
    held.acquire()
    try:
        assert removed
        assert read_pid(path) == os.getpid()
        assert held.fd is not None and pidfile_module.same_file(held.fd, path)
    finally:
        held.release()


def datagrams(sock: socket.socket, until: bytes, timeout: float = 20.0) -> list[bytes]:
    """Notify messages until one contains `until`."""
    got: list[bytes] = []

    def arrived() -> bool:
        sock.settimeout(0.1)
        with contextlib.suppress(TimeoutError):
            got.append(sock.recv(4096))
        return any(until in message for message in got)

    wait_for(arrived, timeout, message=f"{until!r} on NOTIFY_SOCKET (got {got})")
    return got


def test_notify_protocol_reload_from_elsewhere_and_ctrl_c(tmp_path: pathlib.Path) -> None:
    """READY=1 with MAINPID; a reload (relative tap, from another directory) is
    RELOADING=1 then READY=1 with the same pid; SIGINT is STOPPING=1, exit 0, shutdown tap."""
    _, port = echo_tap(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    env = dict(forkd_env(), NOTIFY_SOCKET=notify_path)
    process = subprocess.Popen(
        forkd_command("start", "echo.tap", "-n", "-w", "1"),
        env=env,
        cwd=str(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = datagrams(notify, b"READY=1")
        assert f"MAINPID={process.pid}".encode() in b"\n".join(ready)
        assert echo_once(port) == b"ping"
        reloaded = forkctl("../echo.ctl", "reload", cwd=str(elsewhere))
        assert reloaded.returncode == 0, reloaded.stderr
        after = datagrams(notify, b"READY=1")
        assert after[0].startswith(b"RELOADING=1\nMONOTONIC_USEC="), after
        assert read_pid(str(tmp_path / "echo.pid")) == process.pid
        status = run_forkd("status", "../echo.tap", cwd=str(elsewhere))
        assert status.returncode == 0 and f"master pid {process.pid}" in status.stdout
        assert echo_once(port) == b"ping"
        process.send_signal(signal.SIGINT)
        stopping = datagrams(notify, b"STOPPING=1")
        assert b"READY=1" not in b"".join(stopping)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()
        assert process.stderr is not None
        log = process.stderr.read()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert (tmp_path / "echo-shutdown.tap").exists()
    assert not (tmp_path / "echo.pid").exists() and not (tmp_path / "echo.ctl").exists()


def test_a_stop_while_workers_boot_tells_the_waiting_start(tmp_path: pathlib.Path) -> None:
    import probetap

    tap = probetap.make_tap(str(tmp_path / "hang.tap"), free_port(), hang=True)
    env = forkd_env([TAP_MODULES_DIR])
    starting = subprocess.Popen(
        forkd_command("start", tap, "-w", "1"), env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        pid = wait_for(lambda: read_pid(str(tmp_path / "hang.pid")), 20, message="pidfile")
        stopped = run_forkd("stop", tap, "--now", extra_paths=[TAP_MODULES_DIR])
        assert stopped.returncode == 0 and f"pid {pid}" in stopped.stderr, stopped.stderr
        assert starting.wait(20) == 1
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.wait()
    assert starting.stderr is not None
    assert starting.stderr.read() == "forkd: stopped before it was ready (see its log)\n"
    assert not (tmp_path / "hang.pid").exists()


def test_a_failed_start_lets_go_of_the_pidfile_before_it_returns(tmp_path: pathlib.Path) -> None:
    """A start that fails (a worker stuck booting, another killed for silence) used to
    keep the daemon and its pidfile for the kill grace, so a retry said "already running"
    (issue 9, item 6)."""
    import probetap

    tap = probetap.make_tap(str(tmp_path / "hang.tap"), free_port(), hang=True)
    failed = run_forkd("start", tap, "-w", "2", "--timeout", "1", extra_paths=[TAP_MODULES_DIR])
    assert failed.returncode == 1 and "silent past --timeout" in failed.stderr, failed.stderr
    assert not (tmp_path / "hang.pid").exists(), "released before start returned"
    assert not (tmp_path / "hang.ctl").exists()
    again = run_forkd("start", tap, "-w", "1", "--timeout", "1", extra_paths=[TAP_MODULES_DIR])
    assert again.returncode == 1 and "already running" not in again.stderr, again.stderr
