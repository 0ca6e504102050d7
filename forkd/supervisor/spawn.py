"""The fork line: what happens on each side of `os.fork()` for a new worker, in one place.

Before fork (in the master): each factory's `preload()` has run (`preload` below: a WSGI or
ASGI application is imported here, as gunicorn's --preload does, so every worker shares its
code and data instead of importing its own copy), every port is bound and the heap frozen
(`Master.run` calls `gc.freeze()`, so pages of objects made so far stay shared), and a
socketpair is made for the channel. After fork, in the child: drop the master's end,
close every descriptor that belongs to the master (other workers' channels, the control
socket and its clients, telnet sessions, the selector, the pidfile, the readiness pipe)
and become a `Worker`, which never returns. In the master: close the worker's end and keep
the pid and the channel.
"""

from __future__ import annotations

import os
from typing import Any

from forkd.supervisor.channel import Channel
from forkd.supervisor.daemon import Readiness
from forkd.supervisor.logs import LogSetup
from forkd.supervisor.worker import Worker, WorkerSettings, served_by_worker


def preload(application: Any) -> None:
    """Run each worker-served factory's `preload()` hook once, in the master, before any
    worker forks. It must not start anything (no threads, loops or sockets: those would not
    survive the fork); what it raises is the start's failure, with the factory's message."""
    done: set[int] = set()
    for port in application.ports:
        factory = port.factory
        hook = getattr(factory, "preload", None)
        if hook is not None and served_by_worker(port) and id(factory) not in done:
            done.add(id(factory))
            hook()


def fork_worker(
    application: Any,
    settings: WorkerSettings,
    log_setup: LogSetup | None,
    readiness: Readiness,
) -> tuple[int, Channel]:
    """Fork one worker; in the master, return its pid and the master's channel end."""
    master_end, worker_end = Channel.pair()
    pid = os.fork()
    if pid == 0:  # -- in the worker from here on: never returns
        master_end.sock.detach()  # closed below with the rest, by number
        readiness.fd = None  # the master's to answer, not the worker's
        close_master_fds(application, log_setup, keep=worker_end.fileno())
        Worker(application, worker_end, settings, log_setup).run()
    worker_end.close()
    return pid, master_end


def close_master_fds(application: Any, log_setup: LogSetup | None, keep: int) -> None:
    """In a new worker: close every descriptor except stdio, its channel, the listening
    sockets it serves and the log file. Closing by allowlist also catches what the
    control plane holds (clients, telnet sessions) without knowing about it."""
    allowed = {0, 1, 2, keep}
    for port in application.ports:
        if served_by_worker(port) and getattr(port, "socket", None) is not None:
            allowed.add(port.fileno())
    if log_setup is not None:
        allowed.add(log_setup.fault_fd())
    low = 0
    for fd in sorted(allowed):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
