"""Starting, watching and stopping the servers under test.

Every server runs in its own session (so its own process group): a pre-fork server's
workers, and any helper it forks, all get the one signal when the benchmark ends, and
nothing outlives the run. CPU time is read for the whole process tree, because a master
and its workers together are the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil


class ServerFailed(Exception):
    """A server exited or never answered; the message carries the tail of its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """The status code of one `GET path` on 127.0.0.1:port, or None if nothing answered.

    A raw socket rather than http.client: this must work on a half-started server without
    hanging, and it must not depend on anything the peers' virtualenv has.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a server's output file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """One server process (and its tree) started for a measurement.

    Use as a context manager: whatever happens inside, leaving it kills the whole
    process group (SIGTERM, then SIGKILL after `grace` seconds).
    """

    def __init__(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        grace: float = 5.0,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.grace = grace
        self.output = cwd / "server.out"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.pid

    def wait_until_serving(self, port: int, path: str, timeout: float = 20.0) -> None:
        """Return once `GET path` answers 200; raise ServerFailed on exit or at the deadline."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerFailed(
                    f"exited with code {self.process.returncode}:\n{tail(self.output)}"
                )
            status = http_status(port, path)
            if status == 200:
                return
            if status is not None:
                raise ServerFailed(f"GET {path} answered {status}, not 200")
            time.sleep(delay)  # polling a condition with a deadline, not synchronising
            delay = min(delay * 2, 0.25)
        raise ServerFailed(f"no answer on port {port} within {timeout:.0f}s:\n{tail(self.output)}")

    def cpu_seconds(self) -> dict[int, tuple[float, float]]:
        """(user, system) CPU seconds of every live process in the server's tree, by pid."""
        return tree_cpu_seconds(self.pid)

    def pids(self) -> list[int]:
        """The pids of the server's process tree (root first)."""
        try:
            root = psutil.Process(self.pid)
            return [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """Kill the server's process group: TERM, wait up to `grace`, then KILL."""
        if self.process is None:
            return
        stop_group(self.process, self.grace)


def tree_cpu_seconds(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of `pid` and all its descendants, by pid.

    Keyed by pid so that a before/after difference ignores processes that came or went
    (see cpu_delta); a process vanishing mid-read is simply left out. User and system are
    kept apart because they answer different questions: system time is the kernel's share
    (sockets, loopback TCP), about the same for any server; user time is the server's own.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds: dict[int, tuple[float, float]] = {}
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            seconds[proc.pid] = (times.user, times.system)
    return seconds


def cpu_delta(
    before: Mapping[int, tuple[float, float]], after: Mapping[int, tuple[float, float]]
) -> tuple[float, float]:
    """(user, system) CPU seconds spent between two tree_cpu_seconds readings.

    A process new in `after` counts in full (it was born during the run); one gone from
    `after` is lost, which is why the measurement window holds a steady server.
    """
    user = system = 0.0
    for pid, (u, s) in after.items():
        u0, s0 = before.get(pid, (0.0, 0.0))
        user += max(0.0, u - u0)
        system += max(0.0, s - s0)
    return user, system


def stop_group(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group led by `process`, then SIGKILL it after `grace` seconds."""
    pgid = process.pid  # start_new_session made it the group leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    # Workers may outlive a master that exited on TERM; the group still names them.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


@contextlib.contextmanager
def started(
    argv: Sequence[str], cwd: Path, port: int, path: str, timeout: float = 20.0
) -> Iterator[Server]:
    """Start a server, wait until `GET path` answers 200, and stop it on the way out."""
    with Server(argv, cwd) as server:
        server.wait_until_serving(port, path, timeout)
        yield server
