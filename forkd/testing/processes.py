"""Real forkd, forkctl and mktap processes in tests, on free loopback ports.

`free_port` for a server to bind; `run_forkd`, `forkctl`, `mktap` and `make_tap` run the
commands in subprocesses that import this source tree; `RunningForkd` is `forkd start -n`
for the length of a `with` block, ready when it returns.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from signal import SIGTERM
from typing import Any

from forkd.testing.waiting import wait_for

REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no other free_port() call, here or in another process,
    will return for the next minute, and that a server may bind at once.

    Binding port 0 and closing the socket, the obvious way, hands the port back to the
    kernel at once: the next bind to port 0 anywhere on the machine may get it (another
    test's free_port(), under pytest-xdist a concurrent one), and the server the caller
    starts then fails with "address in use". So the port is parked in TIME_WAIT, as Yelp's
    ephemeral-port-reserve does: listen on it, connect to it once, and close the accepted
    end first. That end then holds the port for TIME_WAIT's 60 s on Linux, while bind() to
    port 0 in every process skips it and so does the kernel's choice of a source port for
    connect(); yet a server setting SO_REUSEADDR, as forkd's TCPPort does, binds it
    straight away, since a connection in TIME_WAIT does not block such a bind.

    What is left of the race is a process that binds this very port by number, and a bind
    without SO_REUSEADDR fails on it for that minute (a test that wants to prove nothing
    listens on the port must set SO_REUSEADDR too: a listener still refuses it then).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        with socket.create_connection(address, timeout=5):
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first is the one left in TIME_WAIT
        return int(address[1])


def refused(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a connection to `port` is refused now (nothing listens there). One that
    times out, queued in a backlog nobody serves, is not refused."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # timed out, queued in a backlog nobody serves: not refused
        pass
    return False


def accept_queue(port: int) -> int:
    """How many connections to IPv4 `port` the kernel holds in its listen queue, accepted
    by no process yet (Linux: the rx_queue of the LISTEN line of /proc/net/tcp, for a
    socket on 127.0.0.1 or every address). What a test reads to see that a server leaves
    connections in the queue, for other workers or for later."""
    addresses = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] in addresses and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    return 0


def forkd_env(extra_paths: Iterable[str] = ()) -> dict[str, str]:
    """The environment a forkd, forkctl or mktap subprocess needs: the source tree (and
    `extra_paths`, where test tap modules live) first on PYTHONPATH, and none of the
    caller's NOTIFY_SOCKET or FORKD_CONTROL, which would send it to a systemd or a master
    that the test does not own."""
    env = dict(os.environ)
    paths = [REPO_ROOT, *extra_paths]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("FORKD_CONTROL", None)
    return env


def forkd_command(*args: str) -> list[str]:
    """The argv of `forkd ARGS`, run by this interpreter."""
    return [sys.executable, "-m", "forkd.cli.forkd", *args]


def forkctl_command(*args: str) -> list[str]:
    """The argv of `forkctl ARGS`, run by this interpreter."""
    return [sys.executable, "-m", "forkd.cli.forkctl", *args]


def mktap_command(*args: str) -> list[str]:
    """The argv of `mktap ARGS`, run by this interpreter."""
    return [sys.executable, "-m", "forkd.cli.mktap", *args]


def run_forkd(
    *args: str,
    extra_paths: Iterable[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run `forkd ARGS` to the end (`start` without -n returns once the daemon serves) and
    return its exit code, stdout and stderr (as text); AssertionError on a timeout.
    `RunningForkd` is the master in the foreground, for the length of a `with` block."""
    return _finished(forkd_command(*args), extra_paths, cwd, timeout, None)


def forkctl(
    ctl: str | None,
    *args: str,
    extra_paths: Iterable[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    forkd: RunningForkd | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `forkctl -c CTL ARGS` to the end and return its exit code, stdout and stderr
    (as text). With `ctl` None there is no -c: forkctl finds the socket itself, in `cwd`.

    A forkctl still running after `timeout` seconds is killed and fails the test with an
    AssertionError naming the command (and showing the tail of `forkd`'s log if given)."""
    command = forkctl_command(*(["-c", ctl] if ctl is not None else []), *args)
    return _finished(command, extra_paths, cwd, timeout, forkd)


def mktap(
    *args: str,
    extra_paths: Iterable[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run `mktap ARGS` to the end and return its exit code, stdout and stderr (as text).
    `extra_paths` are where the tap modules it is given live; AssertionError on a timeout."""
    return _finished(mktap_command(*args), extra_paths, cwd, timeout, None)


def make_tap(
    path: str | os.PathLike[str],
    module: str,
    *options: str,
    extra_paths: Iterable[str] = (),
) -> str:
    """Write the tap file `path` with `mktap -o PATH MODULE OPTIONS` and return its path;
    AssertionError with mktap's stderr if it fails."""
    done = mktap("-o", str(path), module, *options, extra_paths=extra_paths)
    assert done.returncode == 0, f"mktap {module} {' '.join(options)}: {done.stderr}"
    return str(path)


def _finished(
    command: list[str],
    extra_paths: Iterable[str],
    cwd: str | os.PathLike[str] | None,
    timeout: float,
    forkd: RunningForkd | None,
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            env=forkd_env(extra_paths),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        log = f"\n{forkd.log()[-6000:]}" if forkd is not None else ""
        shown = " ".join(command[2:])
        raise AssertionError(f"{shown}: not finished in {timeout}s{log}") from None


class RunningForkd:
    """`forkd start -n TAP` in a subprocess, for the length of a `with` block.

    Entering waits for the master's READY=1 (it is given a private NOTIFY_SOCKET, as
    systemd would), so the ports serve once `with` returns; leaving stops it (TERM, then
    KILL after `stop_timeout`). `log()` is what it wrote to stderr. `RunningForkd.serving`
    is `forkd serve MODULE:APP` instead, for an application with no tap yet."""

    def __init__(
        self,
        tap: str,
        *args: str,
        workers: int = 2,
        extra_paths: Iterable[str] = (),
        ready_timeout: float = 20.0,
        stop_timeout: float = 20.0,
        command: Iterable[str] | None = None,
    ) -> None:
        """`command` replaces `start TAP -n -w WORKERS ARGS` as the arguments of forkd."""
        self.tap = str(tap)
        self.args = list(args)
        self.workers = workers
        self.command = list(command) if command is not None else None
        self.env = forkd_env(extra_paths)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.tap + ".test-stderr"
        self.returncode: int | None = None

    def __enter__(self) -> RunningForkd:
        notify_path = self.tap + ".notify"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        os.chmod(notify_path, 0o666)  # as systemd's: reachable after forkd drops privileges
        env = dict(self.env, NOTIFY_SOCKET=notify_path)
        command = forkd_command(
            *(self.command or ["start", self.tap, "-n", "-w", str(self.workers), *self.args])
        )
        with open(self.log_path, "wb") as stderr:
            self.process = subprocess.Popen(
                command, env=env, stderr=stderr, stdout=subprocess.DEVNULL
            )
        try:
            deadline = time.monotonic() + self.ready_timeout
            while True:
                notify.settimeout(0.1)
                try:
                    if b"READY=1" in notify.recv(4096):
                        return self
                except TimeoutError:
                    pass
                if self.process.poll() is not None:
                    raise AssertionError(f"forkd exited {self.process.returncode}: {self.log()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"forkd not ready in {self.ready_timeout}s: {self.log()}")
        finally:
            notify.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(notify_path)

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @classmethod
    def serving(
        cls,
        directory: str | os.PathLike[str],
        app: str,
        *args: str,
        workers: int = 1,
        ready_timeout: float = 30.0,
    ) -> RunningForkd:
        """`forkd serve APP -w WORKERS ARGS` run in `directory` (its --chdir), where it
        imports APP's module from and writes the tap: DIRECTORY/<module>.tap."""
        module = app.partition(":")[0].rpartition(".")[2]
        tap = os.path.join(os.path.abspath(directory), f"{module}.tap")
        command = ["serve", app, "--chdir", str(directory), "--tap", tap, "-w", str(workers)]
        return cls(tap, workers=workers, ready_timeout=ready_timeout, command=[*command, *args])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        with (
            contextlib.suppress(OSError),
            open(self.log_path, encoding="utf-8", errors="replace") as handle,
        ):
            return handle.read()
        return ""

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def worker_pids(self) -> set[int]:
        """Pids of the master's live worker processes (by their process title)."""
        import psutil

        pids = set()
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                with contextlib.suppress(psutil.Error):
                    if "forkd: worker" in " ".join(child.cmdline()) and child.status() != "zombie":
                        pids.add(child.pid)
        return pids

    def wait_workers(
        self, count: int, timeout: float = 15.0, exclude: Iterable[int] = ()
    ) -> set[int]:
        """Wait until exactly `count` workers run (none of them in `exclude`)."""
        excluded = set(exclude)

        def settled() -> set[int] | None:
            pids = self.worker_pids()
            return pids if len(pids) == count and not pids & excluded else None

        return set(
            wait_for(settled, timeout, message=lambda: f"{count} workers: {self.log()[-2000:]}")
        )

    def stop(self, signum: int = SIGTERM) -> int:
        if self.process is None:
            return -1
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.returncode = self.process.returncode
        return self.returncode
