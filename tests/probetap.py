"""A tap module for the master's end-to-end tests: a line protocol that says which worker
answered, can block its worker, and can refuse to start.

    pid            -> "<worker pid>"
    req N          -> "ok N <worker pid>" (with " close" and a close while draining)
    block          -> sleeps in dataReceived (a stuck worker, for the heartbeat timeout)
    anything else  -> echoed back

`crash_flag=PATH`: while PATH exists, a worker exits (code 1) shortly after it starts
serving, so a crash loop after boot can be turned on and off under a running master.
`hold_flag=PATH`: while PATH exists (60 s at most), a booting worker waits in startFactory,
so a test can hold a rollout half-way.
"""

from __future__ import annotations

import os
import time
from typing import Any

from forkd.app import Application
from forkd.ports import TCPPort
from forkd.protocol import Factory, Protocol, stats


class Probe(Protocol):
    draining = False

    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.line(line.decode())

    def line(self, line: str) -> None:
        pid = os.getpid()
        if line == "pid":
            self.transport.write(f"{pid}\n".encode())
        elif line == "block":
            time.sleep(120)
        elif line.startswith("req "):
            stats.requests += 1
            if self.draining:
                self.transport.write(f"ok {line[4:]} {pid} close\n".encode())
                self.transport.loseConnection()
            else:
                self.transport.write(f"ok {line[4:]} {pid}\n".encode())
        else:
            self.transport.write(line.encode() + b"\n")

    def connectionDraining(self) -> None:
        # like HTTP keep-alive: answer the next request, then close (never cut one)
        self.draining = True


class ProbeFactory(Factory):
    protocol = Probe

    hang = False  # class defaults: taps pickled before the attribute existed still load
    crash_flag: str | None = None

    hold_flag: str | None = None

    def __init__(
        self,
        fail: str | None = None,
        hang: bool = False,
        crash_flag: str | None = None,
        hold_flag: str | None = None,
    ) -> None:
        self.fail = fail
        self.hang = hang
        self.crash_flag = crash_flag
        self.hold_flag = hold_flag

    def startFactory(self) -> None:
        deadline = time.monotonic() + 60
        while self.hold_flag and os.path.exists(self.hold_flag) and time.monotonic() < deadline:
            time.sleep(0.05)  # held by the test: the file is the condition
        if self.hang:
            time.sleep(600)  # a worker that never finishes booting
        if self.fail:
            raise ValueError(self.fail)
        if self.crash_flag and os.path.exists(self.crash_flag):
            import threading

            threading.Timer(0.2, os._exit, (1,)).start()  # after it said "ready"


def make_tap(
    path: str,
    port: int,
    fail: str | None = None,
    name: str = "probe",
    hang: bool = False,
    crash_flag: str | None = None,
    hold_flag: str | None = None,
) -> str:
    """Write a tap serving the probe on 127.0.0.1:`port`."""
    application = Application(name)
    factory = ProbeFactory(fail, hang, crash_flag, hold_flag)
    application.addPort(TCPPort(port, factory, interface="127.0.0.1"))
    application.tapfile = os.path.abspath(path)
    return str(application.save())


def request(sock: Any, line: str) -> str:
    """Send one line on `sock`; the reply line."""
    sock.sendall(line.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return str(data.decode().strip())


def ask(port: int, line: str, timeout: float = 5.0) -> str:
    """One request on a fresh connection; the reply line."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return request(sock, line)


def ports_of(application: Any) -> list[str]:
    return [p.key for p in application.ports]
