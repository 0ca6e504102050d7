"""Becoming a daemon, and telling whoever started us when we are ready.

`daemonize()` double-forks (the daemon is not a session leader, so it can never reacquire a
controlling terminal), calls setsid and sets the umask. The working directory is kept on
purpose: every path forkd uses is made absolute before it forks, and a tap module may rely
on it. The original process waits on a *readiness pipe* and exits only when the master
writes "ok" (every port bound, every worker ready) or an error line, so `forkd start`
returns 0 exactly when the server serves, and otherwise prints the reason.

`sd_notify` is the systemd side of the same idea (Type=notify): one datagram to
$NOTIFY_SOCKET, no library.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

EXIT_NOT_READY = 1


class Readiness:
    """The daemon's end of the readiness pipe (a no-op when not daemonized)."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = fd

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode("utf-8", "replace") + b"\n")
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def ready(self, summary: str = "") -> None:
        """Serving: `forkd start` prints `summary` (what serves, the pid) and exits 0."""
        self._send(f"ok {summary}".rstrip())

    def failed(self, reason: str) -> None:
        self._send("error: " + " ".join(reason.split()))


def daemonize(umask: int = 0o022) -> Readiness:
    """Detach from the terminal; return in the daemon only. The original process waits
    for the readiness line and exits with 0 (ready) or 1 (the reason on stderr)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os.close(write_end)
        sys.exit(wait_ready(read_end))
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.umask(umask)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    close_inherited(keep={write_end})
    return Readiness(write_end)


def close_inherited(keep: set[int]) -> None:
    """Close the descriptors above 2 that the caller passed down to us (inheritable ones;
    Python's own are not). A daemon holding the write end of its caller's pipe makes
    `out=$(forkd start ...)`, ssh or a supervisor reading that pipe wait forever."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd <= 2 or fd in keep:
            continue
        with contextlib.suppress(OSError):
            if os.get_inheritable(fd):
                os.close(fd)


def wait_ready(fd: int) -> int:
    """Read the daemon's single readiness line; print the error if there is one."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(-1, 0)  # the intermediate child exits at once
    line = b"".join(chunks).decode("utf-8", "replace").strip()
    if line == "ok" or line.startswith("ok "):
        if line[3:]:
            print(f"forkd: {line[3:]}", flush=True)
        return 0
    if line.startswith("error: "):
        print(f"forkd: {line[len('error: ') :]}", file=sys.stderr)
    else:
        print("forkd: the daemon exited before it was ready (see its log)", file=sys.stderr)
    return EXIT_NOT_READY


def sd_notify(state: str) -> bool:
    """Send `state` ("READY=1", "RELOADING=1", "STOPPING=1", "MAINPID=N") to systemd when it
    supervises us (NOTIFY_SOCKET set); return whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True
