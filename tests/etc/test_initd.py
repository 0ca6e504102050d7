"""etc/init.d/forkd run as init runs it, against a real tap in a temporary directory.

The script reads its paths from a defaults file (the shipped etc/default/forkd, with the
tap, the commands and the options appended), named by $FORKD_DEFAULTS, so nothing in /etc
is touched. LSB exit codes: status 0 running, 1 dead with a pidfile left, 3 stopped."""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import socket
import subprocess
from collections.abc import Iterator

import psutil
import pytest

from forkd.supervisor.pidfile import read_pid
from forkd.testing import free_port, make_tap, wait_for
from tests.etc.installed import install_commands, repo_file, script_env

INIT_SCRIPT = repo_file("etc/init.d/forkd")
DEFAULTS = repo_file("etc/default/forkd")


class InitScript:
    """`sh etc/init.d/forkd ACTION` with FORKD_DEFAULTS pointing at a file in tmp_path."""

    def __init__(self, tmp_path: pathlib.Path, port: int) -> None:
        self.tap = make_tap(tmp_path / "app.tap", "echo", "--port", str(port))
        self.port = port
        self.pidfile = tmp_path / "app.pid"
        self.log = tmp_path / "app.log"
        commands = install_commands(tmp_path / "bin")
        self.defaults = tmp_path / "default-forkd"
        self.defaults.write_text(
            DEFAULTS.read_text()
            + f"FORKD_TAP={self.tap}\n"
            + f"FORKD_BIN={commands['forkd']}\n"
            + f"FORKCTL_BIN={commands['forkctl']}\n"
            + 'FORKD_OPTS="-w 2 --no-save"\n'
        )

    def run(self, action: str) -> subprocess.CompletedProcess[str]:
        env = dict(script_env(), FORKD_DEFAULTS=str(self.defaults))
        return subprocess.run(
            ["sh", str(INIT_SCRIPT), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )

    def master_pid(self) -> int:
        pid = read_pid(str(self.pidfile))
        assert pid is not None, f"no pid in {self.pidfile}"
        return pid

    def worker_pids(self) -> set[int]:
        pids = set()
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.master_pid()).children():
                with contextlib.suppress(psutil.Error):
                    if "forkd: worker" in " ".join(child.cmdline()) and child.status() != "zombie":
                        pids.add(child.pid)
        return pids

    def kill_master(self) -> None:
        """SIGKILL the master, as the OOM killer would, and wait until it is gone (its lock
        goes with it); then its orphaned workers, which would exit on their own."""
        master = psutil.Process(self.master_pid())
        children = master.children()
        master.kill()
        wait_for(
            lambda: not psutil.pid_exists(master.pid) or master.status() == "zombie",
            30,
            message="the killed master to be gone",
        )
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def echoes(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as client:
            client.sendall(b"ping\n")
            return client.recv(16) == b"ping\n"

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""


@pytest.fixture
def init(tmp_path: pathlib.Path) -> Iterator[InitScript]:
    script = InitScript(tmp_path, free_port())
    try:
        yield script
    finally:
        # whatever a failed assertion left running: the master, then its workers
        pid = read_pid(str(script.pidfile))
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                master = psutil.Process(pid)
                if "forkd" in " ".join(master.cmdline()):
                    for process in [*master.children(), master]:
                        with contextlib.suppress(psutil.Error):
                            process.kill()


def assert_done(done: subprocess.CompletedProcess[str], code: int, log: str = "") -> None:
    assert done.returncode == code, (
        f"{' '.join(done.args)} exited {done.returncode}, expected {code}\n"
        f"stdout: {done.stdout}\nstderr: {done.stderr}\nlog: {log}"
    )


def test_the_script_and_its_defaults_are_valid_posix_shell() -> None:
    for path in (INIT_SCRIPT, DEFAULTS):
        done = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        assert_done(done, 0)


def test_shellcheck_finds_nothing() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck; .ci/run has it)")
    done = subprocess.run(
        ["shellcheck", "-s", "sh", str(INIT_SCRIPT), str(DEFAULTS)], capture_output=True, text=True
    )
    assert_done(done, 0)


@pytest.mark.e2e
def test_start_status_reload_stop_with_lsb_exit_codes(init: InitScript) -> None:
    assert_done(init.run("status"), 3)  # never started: no pidfile, "not running"

    assert_done(init.run("start"), 0)
    master = init.master_pid()
    assert init.echoes()
    status = init.run("status")
    assert_done(status, 0, init.log_tail())
    assert str(master) in status.stdout
    assert_done(init.run("start"), 0)  # LSB: starting a running service succeeds
    assert init.master_pid() == master

    workers = wait_for(
        lambda: init.worker_pids() if len(init.worker_pids()) == 2 else None,
        30,
        message=lambda: f"2 workers: {init.log_tail()}",
    )
    assert_done(init.run("reload"), 0, init.log_tail())
    # the master re-executed in place: same pid, still the pidfile's; a new generation
    assert init.master_pid() == master and psutil.pid_exists(master)
    wait_for(
        lambda: (lambda now: len(now) == 2 and not now & workers)(init.worker_pids()),
        60,
        message=lambda: f"2 new workers (old {workers}): {init.log_tail()}",
    )
    assert init.echoes()
    assert_done(init.run("status"), 0)

    assert_done(init.run("stop"), 0, init.log_tail())
    assert not psutil.pid_exists(master) or psutil.Process(master).status() == "zombie"
    assert not init.pidfile.exists()
    assert_done(init.run("status"), 3)
    assert_done(init.run("stop"), 0)  # LSB: stopping a stopped service succeeds
    assert_done(init.run("reload"), 7)  # LSB: not running


@pytest.mark.e2e
def test_a_killed_master_leaves_status_1_until_it_is_started_again(init: InitScript) -> None:
    assert_done(init.run("start"), 0)
    master = init.master_pid()
    init.kill_master()
    status = init.run("status")
    assert_done(status, 1)
    assert "dead" in status.stdout and init.pidfile.exists()

    assert_done(init.run("start"), 0, init.log_tail())  # a stale pidfile never blocks a start
    assert init.master_pid() != master
    assert_done(init.run("status"), 0)
    assert_done(init.run("restart"), 0, init.log_tail())
    assert_done(init.run("status"), 0)
    assert_done(init.run("stop"), 0)
    assert_done(init.run("status"), 3)


@pytest.mark.e2e
def test_stop_after_a_killed_master_clears_its_pidfile(init: InitScript) -> None:
    assert_done(init.run("start"), 0)
    init.kill_master()
    assert_done(init.run("status"), 1)
    stop = init.run("stop")
    assert_done(stop, 0)
    assert "stale" in stop.stdout and not init.pidfile.exists()
    assert_done(init.run("status"), 3)


@pytest.mark.e2e
def test_an_unknown_action_is_bad_usage(init: InitScript) -> None:
    done = init.run("frobnicate")
    assert_done(done, 2)
    assert "Usage:" in done.stderr
