"""Issue 9's fault scenarios 2-5, measured against a real forkd on 127.0.0.1.

    python scripts/fault_scenarios.py            # all of them, about a minute
    python scripts/fault_scenarios.py killstorm  # one

Each scenario is bounded in count and time and stops by itself.

- fulldisk:  two reloads under load with the log on a full disk (root: it mounts a tmpfs);
             a state file that cannot be written is tests/supervisor/test_e2e_full_disk.py.

- emfile:    the master under `ulimit -n 64`, flooded with control connections: its CPU
             over 3 s, the bytes it logged, and status calls answered after the flood.
- killstorm: six SIGKILLs of serving workers under a load loop: requests sent and failed,
             and the seconds with no worker at all while the port was open.
- stop:      a graceful stop with a connection held open: how long a new connection waits
             before it is refused (it used to wait the whole drain, then be reset).
- clients:   200 idle control clients of the same uid: how many of 20 status calls answer.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import psutil

from forkd.control.client import ControlError, request
from forkd.testing import (
    RunningForkd,
    forkd_command,
    forkd_env,
    free_port,
    make_tap,
    refused,
    wait_for,
)


def echo_tap(directory: pathlib.Path) -> tuple[str, int]:
    port = free_port()
    return make_tap(directory / "echo.tap", "echo", "--port", str(port)), port


def echo(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"ping")
            return sock.recv(4) == b"ping"
    except OSError:
        return False


def status_answers(ctl: str, calls: int) -> int:
    """How many of `calls` forkctl-style status requests the master answers."""
    answered = 0
    for _ in range(calls):
        with contextlib.suppress(ControlError):
            request(ctl, "status", timeout=5)
            answered += 1
    return answered


class Load:
    """Fresh-connection echo requests in a thread until stopped: counts sent and failed."""

    def __init__(self, port: int) -> None:
        self.port, self.sent, self.failed = port, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.sent < 1_000_000:
            self.sent += 1
            if not echo(self.port):
                self.failed += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def killstorm(directory: pathlib.Path) -> str:
    """Six rounds of SIGKILL to every worker, each once the replacements serve."""
    tap, port = echo_tap(directory)
    with RunningForkd(tap, workers=2) as forkd, Load(port) as load:
        workers = forkd.wait_workers(2)
        wait_for(lambda: load.sent > 200, message="load")
        empty = 0.0
        for _ in range(6):
            for pid in workers:
                psutil.Process(pid).kill()
            deadline = time.monotonic() + 40.0
            last = time.monotonic()
            while time.monotonic() < deadline:  # sample the worker count every 10 ms
                now = time.monotonic()
                new = forkd.worker_pids() - workers
                if not new:
                    empty += now - last
                last = now
                if len(new) == 2:
                    break
                time.sleep(0.01)  # a sampling period, not a synchronisation
            workers = forkd.wait_workers(2, exclude=workers, timeout=40)
        sent, failed = load.sent, load.failed
    return f"killstorm: {sent} requests, {failed} failed; {empty:.2f} s with no worker"


def stop(directory: pathlib.Path) -> str:
    tap, port = echo_tap(directory)
    with RunningForkd(tap, "--graceful-timeout", "20", workers=1) as forkd:
        held = socket.create_connection(("127.0.0.1", port), timeout=5)
        held.sendall(b"x")
        held.recv(1)
        forkd.signal(signal.SIGTERM)
        started = time.monotonic()

        try:
            wait_for(lambda: refused(port), 15, message="refused")
            said = f"refused {(time.monotonic() - started) * 1000:.0f} ms after TERM"
        except AssertionError:
            said = "not refused 15 s after TERM: it waits in the backlog"
        held.close()
    return f"stop: a new connection is {said}"


def clients(directory: pathlib.Path) -> str:
    tap, _ = echo_tap(directory)
    ctl = str(directory / "echo.ctl")
    with RunningForkd(tap, workers=1):
        leaked = []
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(ctl)
            leaked.append(sock)
        answered = status_answers(ctl, 20)
        for sock in leaked:
            sock.close()
    return f"clients: {answered} of 20 status calls answered with 200 idle clients"


def emfile(directory: pathlib.Path) -> str:
    tap, _ = echo_tap(directory)
    ctl = str(directory / "echo.ctl")
    log = directory / "echo.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    process = subprocess.Popen(
        forkd_command("start", tap, "-n", "-w", "1", "-l", str(log)),
        env=forkd_env(),
        preexec_fn=limit,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: pathlib.Path(ctl).exists() and "ready:" in log.read_text(), 20)
        flood = []
        for _ in range(120):  # past 64 descriptors; the rest wait in the backlog
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # EAGAIN once the backlog is full
                sock.connect(ctl)
            flood.append(sock)
        master = psutil.Process(process.pid)
        before_log = log.stat().st_size
        cpu = master.cpu_percent(interval=3.0)  # a measuring window, not a wait
        logged = log.stat().st_size - before_log
        for sock in flood:
            sock.close()
        answered = status_answers(ctl, 5)
    finally:
        process.terminate()
        process.wait(30)
    return (
        f"emfile: master CPU {cpu:.0f}% over 3 s, {logged} bytes logged, {answered} of 5 "
        "status calls answered after the flood"
    )


def fulldisk(directory: pathlib.Path) -> str:
    """Two reloads under load while the log is on a full disk (root: a 512 KiB tmpfs)."""
    disk = directory / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)]).returncode:
        return "fulldisk: skipped (cannot mount a tmpfs: needs root)"
    try:
        tap, port = echo_tap(directory)
        with (
            RunningForkd(tap, "-l", str(disk / "echo.log"), workers=2) as forkd,
            Load(port) as load,
        ):
            workers = forkd.wait_workers(2)
            filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
            for size in (65536, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(filler, b"x" * size)
            os.close(filler)
            for _ in range(2):
                forkd.signal(signal.SIGHUP)
                workers = forkd.wait_workers(2, exclude=workers, timeout=30)
            alive = forkd.process is not None and forkd.process.poll() is None
            sent, failed = load.sent, load.failed
    finally:
        subprocess.run(["umount", "-l", str(disk)])
    return (
        f"fulldisk: {sent} requests, {failed} failed across 2 reloads with the log disk full; "
        f"master {'still serving' if alive else 'GONE'}"
    )


SCENARIOS: dict[str, Callable[[pathlib.Path], str]] = {
    "fulldisk": fulldisk,
    "emfile": emfile,
    "killstorm": killstorm,
    "stop": stop,
    "clients": clients,
}


def main(names: list[str]) -> int:
    for name in names or list(SCENARIOS):
        with tempfile.TemporaryDirectory(prefix=f"forkd-{name}-") as directory:
            print(SCENARIOS[name](pathlib.Path(directory)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
