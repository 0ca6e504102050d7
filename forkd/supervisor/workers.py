"""`WorkerPool`: the master's record of its worker processes, and the verbs that act on them.

One `WorkerProcess` per live worker (forkd.supervisor.supervision), keyed by pid: spawn one
(through the fork line in `forkd.supervisor.spawn`), send it a message, hear from it,
check its heartbeats, stop, kill and reap it. Exit codes are the worker -> master protocol:
`exited` decodes the waitpid status, names the signal in the log, and tells the owner
(`PoolOwner.worker_failed`) when an exit was a failure. The pool decides nothing about how
many workers there should be: that is `Master.manage_workers`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable
from typing import Any, Protocol

from forkd.supervisor import logs
from forkd.supervisor.channel import Channel, ChannelClosed, ChannelError, Op
from forkd.supervisor.loop import Loop
from forkd.supervisor.supervision import (
    KILL_GRACE,
    WorkerProcess,
    WorkerState,
    describe_status,
    kills_due,
    overdue,
)
from forkd.supervisor.worker import EXIT_BOOT_FAILED

log = logs.get("master")

Fork = Callable[[int], tuple[int, Channel]]  # worker number -> (pid, master's channel end)


class PoolOwner(Protocol):
    """What the pool reports to the master."""

    def worker_failed(self, worker: WorkerProcess, reason: str) -> None:
        """It died while it should have been serving (or booting)."""

    def worker_reported(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        """It acknowledged a port change (port_added, port_failed, port_removed)."""

    def worker_gone(self, worker: WorkerProcess) -> None:
        """It has been reaped: nothing will be heard from it again."""


class WorkerPool:
    """The worker processes of one master, and the children that are not workers."""

    def __init__(
        self,
        loop: Loop,
        owner: PoolOwner,
        fork: Fork,
        graceful_timeout: float,
        timeout: float,
    ) -> None:
        self.loop = loop
        self.owner = owner
        self.fork = fork
        self.graceful_timeout = graceful_timeout
        self.timeout = timeout
        self.workers: dict[int, WorkerProcess] = {}
        self.helpers: dict[int, Callable[[int], None]] = {}  # pid -> on exit(status)
        self.generation = 1  # what newly spawned workers belong to

    # -- who is there ---------------------------------------------------------------------
    def all(self) -> list[WorkerProcess]:
        return list(self.workers.values())

    def current(self) -> list[WorkerProcess]:
        """The current generation's workers that count toward the target."""
        return [
            w
            for w in self.workers.values()
            if w.generation == self.generation and w.alive_for_service
        ]

    def serving(self) -> list[WorkerProcess]:
        """Workers that can still be told about a port change."""
        return [
            w
            for w in self.workers.values()
            if w.state in (WorkerState.BOOTING, WorkerState.READY) and not w.channel.closed
        ]

    def next_number(self, exclude: set[int] | frozenset[int] = frozenset()) -> int:
        """The lowest worker number not in use (nor in `exclude`: slots backing off)."""
        used = {w.number for w in self.workers.values()} | exclude
        return next(n for n in range(1, len(used) + 2) if n not in used)

    # -- verbs ----------------------------------------------------------------------------
    def spawn(self, exclude: set[int] | frozenset[int] = frozenset()) -> WorkerProcess:
        number = self.next_number(exclude)
        pid, channel = self.fork(number)
        worker = WorkerProcess(pid, number, self.generation, channel, self.loop.clock())
        self.adopt(worker)
        log.info("spawned worker %d (pid %d, generation %d)", number, pid, self.generation)
        return worker

    def adopt(self, worker: WorkerProcess) -> None:
        """Take `worker` into the pool and listen to its channel (a spawn, or a re-exec)."""
        self.workers[worker.pid] = worker
        self.loop.add_reader(worker.channel.fd, functools.partial(self.on_channel, worker))

    def stop(self, worker: WorkerProcess, graceful: bool, reason: str = "stopped") -> None:
        """Ask a worker to stop; SIGKILL it if it outlives the graceful timeout. `reason`
        is what its exit counts as (a reload, a scale-down, the server's shutdown, ...)."""
        if worker.state is WorkerState.STOPPING:
            return
        worker.state = WorkerState.STOPPING
        worker.exit_reason = reason
        grace = self.graceful_timeout if graceful else 0.0
        worker.kill_at = self.loop.clock() + grace + KILL_GRACE
        self.kill(worker.pid, signal.SIGTERM if graceful else signal.SIGQUIT)

    def stop_all(self, graceful: bool) -> None:
        """The master is stopping: every worker, even one already stopping, is told now."""
        for worker in self.all():
            # said before the signal: its long-lived connections (WebSockets) say "going
            # away" (1001) to their peers rather than "restarting, reconnect" (1012)
            self.send(worker, {"op": Op.SHUTDOWN})
            # One still booting has no connection to drain, and may be stuck in its
            # factories' startFactory: waiting the graceful timeout for it only delays the stop.
            drain = graceful and worker.state is not WorkerState.BOOTING
            worker.state = WorkerState.BOOTING  # so stop() acts even on stopping ones
            self.stop(worker, drain, "shutdown")

    def signal_all(self, signum: int) -> None:
        for worker in self.all():
            self.kill(worker.pid, signum)

    @staticmethod
    def kill(pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # gone: the reaper will hear of it
            os.kill(pid, signum)

    def send(
        self, worker: WorkerProcess, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
    ) -> bool:
        """Send to a worker without blocking the loop; False if its channel is gone."""
        channel = worker.channel
        try:
            channel.send(message, fds)
        except ChannelClosed:
            return False
        if channel.wants_write:

            def flush() -> None:
                try:
                    if not channel.flush():
                        return
                except ChannelClosed:
                    # closed just now, so its number is not yet anyone else's: drop the
                    # whole registration while forgetting it still means this channel
                    self.loop.forget(channel.fd)
                    return
                self.loop.remove_writer(channel.fd)

            self.loop.add_writer(channel.fd, flush)
        return True

    # -- heartbeats -----------------------------------------------------------------------
    def check(self, now: float) -> None:
        """Abort workers silent past the timeout; SIGKILL those past their deadline."""
        for worker in overdue(self.all(), now, self.timeout):
            # Its heartbeats may be sitting unread in our socket buffer: after the master
            # itself was stopped, select() can time out before it reports the channel
            # readable. Read them before calling the worker silent.
            if not worker.channel.closed:
                self.on_channel(worker)
            if now - worker.last_beat <= self.timeout:
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
        for worker in kills_due(self.all(), now):
            log.error("worker %d (pid %d) did not exit: SIGKILL", worker.number, worker.pid)
            worker.kill_at = None
            self.kill(worker.pid, signal.SIGKILL)

    # -- messages -------------------------------------------------------------------------
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
        now = self.loop.clock()
        if op == Op.HEARTBEAT:
            worker.beat(now, message)
        elif op == Op.READY:
            worker.beat(now, message)
            worker.was_ready = True
            if worker.state is WorkerState.BOOTING:
                worker.state = WorkerState.READY
            log.info("worker %d (pid %d) ready", worker.number, worker.pid)
        elif op == Op.BOOT_FAILED:
            worker.boot_error = str(message.get("error", "unknown error"))
        elif op in (Op.PORT_ADDED, Op.PORT_FAILED, Op.PORT_REMOVED):
            self.owner.worker_reported(worker, message)
        else:
            log.warning("worker %d sent an unknown message %r", worker.number, op)

    # -- exits ----------------------------------------------------------------------------
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
                self.exited(self.workers.pop(pid), status)
            elif pid in self.helpers:
                self.helpers.pop(pid)(status)
            else:
                log.info("reaped unknown child %d: %s", pid, describe_status(status)[0])

    def exited(self, worker: WorkerProcess, status: int) -> None:
        text, code, worker.exit_signal = describe_status(status)
        if not worker.channel.closed:
            # Only while open: once closed, its number may already be another socket's
            # (a forkctl client accepted since), and forgetting it would deafen that one.
            self.loop.forget(worker.channel.fd)
        with contextlib.suppress(ChannelClosed, ChannelError):
            for message, _fds in worker.channel.receive():  # its last words
                self.on_message(worker, message)
        worker.channel.close()
        what = f"worker {worker.number} (pid {worker.pid})"
        # counted by its heartbeats: one that dies between two has served more than this
        served = f"after {worker.accepted} connection(s) by its last heartbeat"
        if worker.state is WorkerState.STOPPING and code == 0:
            log.info("%s stopped %s", what, served)
        elif code == EXIT_BOOT_FAILED:
            worker.exit_reason = "boot_failure"
            reason = worker.boot_error or text
            log.error("%s failed to boot: %s", what, reason)
            self.owner.worker_failed(worker, f"worker failed to boot: {reason}")
        elif worker.state is WorkerState.STOPPING:
            log.warning("%s %s while stopping, %s", what, text, served)
        else:
            worker.exit_reason = "crash"
            if worker.state is WorkerState.TIMED_OUT:
                worker.exit_reason = "timeout"
                text = f"was silent past --timeout {self.timeout:g}s ({text})"
            log.error("%s %s, %s", what, text, served)
            self.owner.worker_failed(worker, f"worker {worker.number} {text} during boot")
        self.owner.worker_gone(worker)

    # -- across a re-exec -----------------------------------------------------------------
    def snapshot(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Each live worker as JSON, and the channel descriptors to keep across the exec."""
        entries, fds = [], []
        now = self.loop.clock()
        for worker in self.all():
            if worker.channel.closed:
                continue
            try:  # what is queued for it would be forgotten by the exec
                worker.channel.flush_blocking(1.0)
            except OSError as error:
                log.warning("reload: worker %d: cannot flush its channel: %s", worker.number, error)
            entries.append(
                {
                    "pid": worker.pid,
                    "number": worker.number,
                    "generation": worker.generation,
                    "fd": worker.channel.fileno(),
                    "state": worker.state.value,
                    "was_ready": worker.was_ready,
                    # a draining worker's SIGKILL deadline, as seconds from now: a relative
                    # deadline needs no clock shared between the two images
                    "kill_in": None if worker.kill_at is None else worker.kill_at - now,
                }
            )
            fds.append(worker.channel.fileno())
        return entries, fds

    def restore(self, entries: list[dict[str, Any]]) -> None:
        """In the new image: adopt the workers `snapshot` described."""
        now = self.loop.clock()
        for entry in entries:
            os.set_inheritable(entry["fd"], False)
            channel = Channel.from_fd(entry["fd"])
            worker = WorkerProcess(entry["pid"], entry["number"], entry["generation"], channel, now)
            worker.state = WorkerState(entry["state"])
            worker.was_ready = bool(entry.get("was_ready", worker.state is not WorkerState.BOOTING))
            if entry.get("kill_in") is not None:
                worker.kill_at = now + max(0.0, float(entry["kill_in"]))
            elif worker.state is WorkerState.TIMED_OUT:  # from an image that kept no deadline
                worker.kill_at = now
            elif worker.state is WorkerState.STOPPING:
                worker.kill_at = now + self.graceful_timeout + KILL_GRACE
            self.adopt(worker)
