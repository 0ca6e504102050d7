"""The master's workers as processes: fork them, hear from them, stop, kill and reap them.

A mixin of `forkd.supervisor.master.Master`, kept apart so the arbiter (`manage_workers`,
signals, the loop) stays readable. Before fork / after fork: `spawn_worker` forks; in the child,
`close_master_fds` closes every master-only descriptor and the process belongs to
`forkd.supervisor.worker` from then on. Exit codes are the worker -> master protocol:
`worker_exited` decodes the waitpid status, names the signal in the log, and tells the
master (`worker_failed`) when an exit was a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from forkd.supervisor import logs
from forkd.supervisor.channel import Channel, ChannelClosed, ChannelError
from forkd.supervisor.loop import Loop
from forkd.supervisor.supervision import (
    KILL_GRACE,
    WorkerProcess,
    WorkerState,
    describe_status,
    kills_due,
    overdue,
)
from forkd.supervisor.worker import (
    EXIT_BOOT_FAILED,
    HEARTBEAT_INTERVAL,
    Worker,
    WorkerSettings,
    served_by_worker,
)

log = logs.get("master")


class WorkerProcessesMixin:
    """Spawning, messages, heartbeats, stopping and reaping for the Master."""

    # provided by Master
    application: Any
    config: Any
    log_setup: Any
    readiness: Any
    loop: Loop
    tapfile: str
    workers: dict[int, WorkerProcess]
    generation: int
    helpers: dict[int, Any]

    now: Callable[[], float]  # the master's clock (one place, so tests can fake it)
    worker_failed: Callable[[WorkerProcess, str], None]  # fail the start, roll back, back off
    on_change_message: Callable[[WorkerProcess, dict[str, Any]], None]  # forkd.supervisor.changes
    change_worker_exited: Callable[[WorkerProcess], None]  # forkd.supervisor.changes

    def next_number(self) -> int:
        used = {w.number for w in self.workers.values()}
        return next(n for n in range(1, len(used) + 2) if n not in used)

    def spawn_worker(self) -> WorkerProcess:
        number = self.next_number()
        master_end, worker_end = Channel.pair()
        pid = os.fork()
        if pid == 0:  # -- in the worker from here on: never returns
            master_end.sock.detach()
            self.close_master_fds(keep=worker_end.fileno())
            settings = WorkerSettings(
                number=number,
                title=os.path.basename(self.tapfile),
                graceful_timeout=self.config.graceful_timeout,
                # several beats per timeout: one late timer must not look like a hung worker
                heartbeat_interval=min(HEARTBEAT_INTERVAL, self.config.timeout / 4),
            )
            Worker(self.application, worker_end, settings, self.log_setup).run()
        worker_end.close()
        worker = WorkerProcess(pid, number, self.generation, master_end, self.now())
        self.workers[pid] = worker
        self.loop.add_reader(master_end.fileno(), lambda: self.on_channel(worker))
        log.info("spawned worker %d (pid %d, generation %d)", number, pid, self.generation)
        return worker

    def close_master_fds(self, keep: int) -> None:
        """In a new worker: close every descriptor except stdio, its channel, the listening
        sockets it serves and the log file. Closing by allowlist also catches what the
        control plane holds (clients, telnet sessions) without knowing about it."""
        self.readiness.fd = None
        allowed = {0, 1, 2, keep}
        for port in self.application.ports:
            if served_by_worker(port) and getattr(port, "socket", None) is not None:
                allowed.add(port.fileno())
        if self.log_setup is not None:
            allowed.add(self.log_setup.fault_fd())
        low = 0
        for fd in sorted(allowed):
            if fd > low:
                os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))

    def stop_worker(self, worker: WorkerProcess, graceful: bool) -> None:
        """Ask a worker to stop; SIGKILL it if it outlives the graceful timeout."""
        if worker.state is WorkerState.STOPPING:
            return
        worker.state = WorkerState.STOPPING
        grace = self.config.graceful_timeout if graceful else 0.0
        worker.kill_at = self.now() + grace + KILL_GRACE
        self.kill(worker.pid, signal.SIGTERM if graceful else signal.SIGQUIT)

    def kill(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # gone: the reaper will hear of it
            os.kill(pid, signum)

    def check_workers(self, now: float) -> None:
        for worker in overdue(list(self.workers.values()), now, self.config.timeout):
            # Its heartbeats may be sitting unread in our socket buffer: after the master
            # itself was stopped, select() can time out before it reports the channel
            # readable. Read them before calling the worker silent.
            if not worker.channel.closed:
                self.on_channel(worker)
            if now - worker.last_beat <= self.config.timeout:
                continue
            log.error(
                "worker %d (pid %d) sent no heartbeat for %.1fs: aborting it (SIGABRT)",
                worker.number,
                worker.pid,
                now - worker.last_beat,
            )
            worker.state = WorkerState.TIMED_OUT
            worker.kill_at = now + KILL_GRACE
            self.kill(worker.pid, signal.SIGABRT)
        for worker in kills_due(list(self.workers.values()), now):
            log.error("worker %d (pid %d) did not exit: SIGKILL", worker.number, worker.pid)
            worker.kill_at = None
            self.kill(worker.pid, signal.SIGKILL)

    def on_channel(self, worker: WorkerProcess) -> None:
        try:
            messages = worker.channel.receive()
        except (ChannelClosed, ChannelError) as error:
            if isinstance(error, ChannelError):
                log.error("worker %d sent garbage (%s): killing it", worker.number, error)
                self.kill(worker.pid, signal.SIGKILL)
            self.loop.forget(worker.channel.fd)
            worker.channel.close()
            return
        for message, fds in messages:
            for fd in fds:  # workers never send descriptors
                os.close(fd)
            self.on_message(worker, message)

    def on_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message["op"]
        now = self.now()
        if op == "heartbeat":
            worker.beat(now, message)
        elif op == "ready":
            worker.beat(now, message)
            worker.was_ready = True
            if worker.state is WorkerState.BOOTING:
                worker.state = WorkerState.READY
            log.info("worker %d (pid %d) ready", worker.number, worker.pid)
        elif op == "boot_failed":
            worker.boot_error = str(message.get("error", "unknown error"))
        else:
            self.on_change_message(worker, message)

    def reap(self) -> None:
        """Collect every exited child (workers, helpers, and strays)."""
        for _ in range(10000):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers:
                self.worker_exited(self.workers.pop(pid), status)
            elif pid in self.helpers:
                self.helpers.pop(pid)(status)
            else:
                log.info("reaped unknown child %d: %s", pid, describe_status(status)[0])

    def worker_exited(self, worker: WorkerProcess, status: int) -> None:
        text, code, _ = describe_status(status)
        if not worker.channel.closed:
            # Only while open: once closed, its number may already be another socket's
            # (a forkctl client accepted since), and forgetting it would deafen that one.
            self.loop.forget(worker.channel.fd)
        with contextlib.suppress(ChannelClosed, ChannelError):
            for message, _fds in worker.channel.receive():  # its last words
                self.on_message(worker, message)
        worker.channel.close()
        what = f"worker {worker.number} (pid {worker.pid})"
        served = f"after {worker.accepted} connection(s)"
        if worker.state is WorkerState.STOPPING and code == 0:
            log.info("%s stopped %s", what, served)
        elif code == EXIT_BOOT_FAILED:
            reason = worker.boot_error or text
            log.error("%s failed to boot: %s", what, reason)
            self.worker_failed(worker, f"worker failed to boot: {reason}")
        elif worker.state is WorkerState.STOPPING:
            log.warning("%s %s while stopping, %s", what, text, served)
        else:
            if worker.state is WorkerState.TIMED_OUT:
                text = f"was silent past --timeout {self.config.timeout:g}s ({text})"
            log.error("%s %s, %s", what, text, served)
            self.worker_failed(worker, f"worker {worker.number} {text} during boot")
        self.change_worker_exited(worker)
