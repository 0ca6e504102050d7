"""A tap module for the PID 1 test: a worker makes an orphan on request.

orphan PATH  -> "<pid>": a process, started through a shell that exits at once, that
                waits for PATH to exist and then exits 7. Its parent is gone, so the
                kernel hands it to the nearest reaper: PID 1 of its PID namespace.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from forkd.app import Application
from forkd.ports import TCPPort
from forkd.protocol import Factory, Protocol


class OrphanMaker(Protocol):
    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in self.buffer:
            return
        line, self.buffer = self.buffer.split(b"\n", 1)
        verb, _, path = line.decode().partition(" ")
        if verb != "orphan" or not path:
            self.transport.write(b"?\n")
            return
        flag = shlex.quote(path)
        # bounded: the orphan gives up after 60 s even if the test never makes the flag
        waiting = f"i=0; while [ ! -e {flag} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"
        shell = subprocess.Popen(
            ["sh", "-c", f"({waiting}; exit 7) >/dev/null 2>&1 & echo $!"],
            stdout=subprocess.PIPE,
            text=True,
        )
        pid, _ = shell.communicate(timeout=10)  # the shell exits; its child lives on
        self.transport.write(f"{pid.strip()}\n".encode())


class OrphanFactory(Factory):
    protocol = OrphanMaker


def make_tap(path: str, port: int) -> str:
    """Write a tap serving OrphanMaker on 127.0.0.1:`port`."""
    application = Application("orphans")
    application.addPort(TCPPort(port, OrphanFactory(), interface="127.0.0.1"))
    application.tapfile = os.path.abspath(path)
    return str(application.save())
