"""The control socket under exhaustion: out of descriptors, and out of client slots."""

from __future__ import annotations

import errno
import pathlib
import socket
from typing import Any

from forkd.app import Application
from forkd.control.server import ControlServer
from forkd.testing import FakeMaster


class OutOfFiles:
    """The listening socket while the process has no descriptor left: accept fails."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.accepts = 0
        self.failing = True

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> Any:
        self.accepts += 1
        if self.failing:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()

    def close(self) -> None:
        self.sock.close()


def test_the_control_socket_pauses_on_emfile_then_accepts_again(tmp_path: pathlib.Path) -> None:
    master = FakeMaster(Application("app"))
    control = ControlServer(master, str(tmp_path / "app.ctl"))
    control.listen()
    control.accept_errors.pause = 0.2
    assert control.sock is not None
    failing = OutOfFiles(control.sock)
    master.remove_reader(control.sock)
    control.sock = failing  # type: ignore[assignment]
    control._start_accepting()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(control.path)  # pending: the listening socket stays readable
    try:
        for _ in range(50):
            master.step(0.001)
        assert failing.accepts == 1, "one failed accept, then the socket is out of the loop"
        assert control.accept_errors.paused
        failing.failing = False
        master.run_until(lambda: len(control.clients) == 1, timeout=5)
        assert not control.accept_errors.paused
    finally:
        client.close()
        control.close()
    assert master.loop_errors == []


def test_a_full_control_socket_evicts_its_longest_idle_client(tmp_path: pathlib.Path) -> None:
    """200 leaked idle connections of the same uid do not lock the administrator out."""
    from forkd.control.client import request
    from forkd.control.server import MAX_CLIENTS

    master = FakeMaster(Application("app"))
    control = ControlServer(master, str(tmp_path / "app.ctl"))
    control.listen()
    leaked = []
    try:
        with master.running():
            for _ in range(200):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(control.path)
                leaked.append(sock)
            answered = sum(
                1 for _ in range(20) if request(control.path, "status", timeout=5)["pid"]
            )
            assert answered == 20
            assert len(control.clients) <= MAX_CLIENTS
    finally:
        for sock in leaked:
            sock.close()
        control.close()
    assert master.loop_errors == []
