"""forkd under systemd's protocols, with real processes: socket activation by the real
`systemd-socket-activate`, and sd_notify messages (READY, RELOADING with MONOTONIC_USEC,
STATUS, WATCHDOG, STOPPING, MAINPID) read from a datagram socket as systemd would."""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from forkd.app import Application
from forkd.ports import TCPPort
from forkd.testing import forkctl, forkd_command, forkd_env, free_port, wait_for
from forkd.web import server
from forkd.web.hello import Hello
from tests.webserving import get

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def hello_tap(directory: pathlib.Path, port: int) -> str:
    app = Application("hello")
    app.addPort(TCPPort(port, server.Site(Hello()), interface="127.0.0.1"))
    app.tapfile = str(directory / "hello.tap")
    app.save()
    return app.tapfile


def stop(process: subprocess.Popen[Any]) -> int:
    process.terminate()
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
def test_socket_activation_serves_the_socket_systemd_passed(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = hello_tap(tmp_path, port)
    log = tmp_path / "forkd.log"
    command = [
        "systemd-socket-activate",
        *("--listen", f"127.0.0.1:{port}"),
        *forkd_command("start", tap, "-n", "-w", "2", "-l", str(log)),
    ]
    # systemd-socket-activate binds, then execs forkd with LISTEN_FDS=1 and LISTEN_PID
    process = subprocess.Popen(command, env=forkd_env(), stderr=subprocess.DEVNULL)
    try:
        response = wait_for(lambda: _get_or_none(port), 30, message="an activated answer")
        assert response.status == 200 and response.body == b"Hello, world!\n"
        text = log.read_text()
        assert f"tcp:127.0.0.1:{port} uses the socket it was passed" in text
    finally:
        assert stop(process) == 0, log.read_text()[-3000:]


def _get_or_none(port: int) -> Any:
    try:
        return get(port, b"/")
    except OSError:
        return None


class Notifications:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def seen(self, text: str) -> list[str]:
        return [message for message in list(self.messages) if text in message]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_sd_notify_across_start_reload_and_stop(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = hello_tap(tmp_path, port)
    notify = Notifications(str(tmp_path / "notify"))
    env = dict(forkd_env(), NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="200000")
    command = forkd_command("start", tap, "-n", "-w", "1", "-l", str(tmp_path / "forkd.log"))
    process = subprocess.Popen(command, env=env)
    try:
        ready = wait_for(lambda: notify.seen("READY=1"), 30, message="READY=1")
        assert f"MAINPID={process.pid}" in ready[0] and "STATUS=serving" in ready[0]
        wait_for(lambda: len(notify.seen("WATCHDOG=1")) >= 3, message="watchdog pings")
        done = forkctl(str(tmp_path / "hello.ctl"), "reload")
        assert done.returncode == 0, done.stderr
        reloading = wait_for(lambda: notify.seen("RELOADING=1"), message="RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading[0]
        usec = int(reloading[0].split("MONOTONIC_USEC=")[1].split()[0])
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert now - 60_000_000 < usec <= now, "CLOCK_MONOTONIC microseconds, as systemd wants"
        wait_for(lambda: len(notify.seen("READY=1")) >= 2, message="READY=1 after the reload")
        after = notify.messages.index(notify.seen("RELOADING=1")[0])
        assert any("READY=1" in m for m in notify.messages[after:])
        pings = len(notify.seen("WATCHDOG=1"))
        wait_for(lambda: len(notify.seen("WATCHDOG=1")) > pings, message="pings after re-exec")
    finally:
        assert stop(process) == 0
    wait_for(lambda: notify.seen("STOPPING=1"), message="STOPPING=1")
    notify.close()


def test_a_password_given_to_forkctl_append_is_not_logged(tmp_path: pathlib.Path) -> None:
    from forkd.testing import RunningForkd

    tap = hello_tap(tmp_path, free_port())
    with RunningForkd(tap, workers=1) as forkd:
        done = forkctl(
            str(tmp_path / "hello.ctl"),
            *("append", "telnet", "--port", str(free_port()), "--password", "hunter2"),
        )
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "append" in forkd.log(), message="the append logged")
    assert "hunter2" not in forkd.log()
    assert "hunter2" not in (tmp_path / "hello.tap").read_bytes().decode("latin-1")
