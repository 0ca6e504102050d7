"""systemd socket activation (sd_listen_fds(3)): listening sockets passed to the master.

systemd (or `systemd-socket-activate`, or any supervisor speaking the protocol) binds the
sockets of a `.socket` unit and starts forkd with them as descriptors 3, 4, ... and
`LISTEN_FDS=N`, `LISTEN_PID=<our pid>`, optionally `LISTEN_FDNAMES=a:b`. The tap still says
what is served where: each of its ports whose address matches a passed socket adopts that
socket instead of binding (so privileged ports need no root, and a restart of forkd never
refuses a connection: the socket stays open in systemd). A port with no matching socket
binds as usual; a passed socket no port wants is logged and closed.

The variables are removed from the environment once read, as sd_listen_fds(1) does, so
neither the workers nor a re-executed master take them for their own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from forkd.ports import InheritedPort, TCPPort, UNIXPort
from forkd.supervisor import logs

log = logs.get("master")

FIRST_FD = 3  # SD_LISTEN_FDS_START
ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def passed_sockets(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """The sockets passed to this process, and the variables removed (they are ours only
    if LISTEN_PID is our pid; an inherited LISTEN_FDS meant for a parent is ignored)."""
    env = os.environ if environ is None else environ
    count, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    for name in ENV:
        env.pop(name, None)
    if not count.isdigit() or not pid.isdigit() or int(pid) != os.getpid():
        return []
    sockets = []
    for fd in range(FIRST_FD, FIRST_FD + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as error:
            log.warning("socket activation: descriptor %d is not a socket: %s", fd, error)
            continue
        os.set_inheritable(fd, False)
        sockets.append(sock)
    return sockets


def _address_of(port: Any) -> tuple[int, Any] | None:
    """What a tap port would bind: (family, address) in getsockname()'s form."""
    if isinstance(port, UNIXPort):
        return socket.AF_UNIX, port.path
    if isinstance(port, TCPPort):
        return port.family, port.interface or "0.0.0.0"
    return None


def _matches(port: Any, sock: socket.socket) -> bool:
    wanted = _address_of(port)
    if wanted is None or sock.family != wanted[0] or sock.type != socket.SOCK_STREAM:
        return False
    bound = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        name = bound.decode() if isinstance(bound, bytes) else bound
        return bool(name == wanted[1])
    return bool(bound[0] == wanted[1] and bound[1] == port.port)


def adopt(ports: Iterable[Any], sockets: list[socket.socket]) -> list[str]:
    """Give each port the passed socket matching its address; close the rest. The keys of
    the ports that adopted one."""
    adopted = []
    unused = list(sockets)
    for port in ports:
        if isinstance(port, InheritedPort) or getattr(port, "socket", None) is not None:
            continue
        for sock in unused:
            if _matches(port, sock):
                unused.remove(sock)
                port.adopt(sock.detach())
                adopted.append(port.key)
                log.info("socket activation: %s uses the socket it was passed", port.key)
                break
    for sock in unused:
        log.warning(
            "socket activation: no port of the tap listens on %s; closing it", sock.getsockname()
        )
        sock.close()
    return adopted
