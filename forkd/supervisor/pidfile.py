"""The pidfile, held with an fcntl lock for the master's whole life.

The lock, not the file's existence, says whether forkd runs: a master that crashed leaves a
file nobody holds, which never blocks a start; a live master holds the lock, so a second
`forkd start` fails with "already running (pid N)". POSIX locks are not inherited by forked
children (workers never hold it) and survive exec (a reload re-exec keeps it while the
descriptor stays open).
"""

from __future__ import annotations

import contextlib
import fcntl
import os


class AlreadyRunning(Exception):
    """Another live process holds the pidfile."""


class PidFile:
    """A locked pidfile. `acquire()` takes it, `release()` removes it."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        """`fd` adopts a descriptor that already holds the lock (after a re-exec)."""
        self.path = os.path.abspath(path)
        self.fd = fd

    def acquire(self) -> None:
        """Lock the file and write our pid; raise AlreadyRunning if a live process has it."""
        for _ in range(10):  # bounded: each retry means a master just removed the file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = read_pid(self.path)
                os.close(fd)
                shown = f"pid {holder}" if holder else "pid unknown"
                raise AlreadyRunning(f"already running ({shown}); pidfile {self.path}") from None
            if same_file(fd, self.path):
                break
            # the stopping master unlinked the file between our open and our lock: the lock
            # is on a dead inode that nobody else will ever see; a second start would take
            # the new file too, and two masters would run
            os.close(fd)
        else:
            raise OSError(f"the pidfile {self.path} keeps being removed")
        self.fd = fd
        self.write(os.getpid())

    def write(self, pid: int) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)
        os.fsync(self.fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def same_file(fd: int, path: str) -> bool:
    """Whether `fd` is still the file named `path` (not unlinked or replaced)."""
    try:
        named = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def read_pid(path: str) -> int | None:
    """The pid written in `path`, or None when missing or unreadable."""
    try:
        with open(path) as handle:
            text = handle.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_pid(path: str) -> int | None:
    """The pid of the live master holding `path`'s lock, or None if no one holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            # a read lock test: F_GETLK via lockf is not exposed, so try a shared lock on a
            # separate descriptor; it fails only while the master holds its exclusive lock
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return read_pid(path)
        return None
    finally:
        os.close(fd)
