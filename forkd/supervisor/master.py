"""The master: binds the ports, forks the workers, and supervises them for as long as it runs.

One thread, one `Loop`. Each iteration: wait for files or the next timer; notice
if we were suspended; run file callbacks (worker channels, control socket); dispatch queued
signals to `handle_<signal>`; run timers; check heartbeats; converge the worker set on the
target (`manage_workers`). Decisions are made by `forkd.supervisor.supervision` (pure logic).

Before fork / after fork: the master binds every port and calls `gc.freeze()` before it
forks; a new worker process closes every master-only descriptor (other workers' channels,
the control socket, the selector, the pidfile) and then belongs to `forkd.supervisor.worker`.

The workers as processes (fork, messages, heartbeats, stop, kill, reap) are in
`workers`, live changes (ports, rolling restart, reload) in `changes`
on top of it; `Master` inherits both mixins.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

# Imported here, not where used: after `-u` drops privileges, modules the new user may not
# read (a Python installed under /root) can no longer be imported.
import psutil  # noqa: F401  (forkd.supervisor.status reads worker RSS with it)
import setproctitle

from forkd.control.masterports import MasterPorts
from forkd.control.server import ControlServer
from forkd.ports import port_key
from forkd.supervisor import logs
from forkd.supervisor.changes import ChangesMixin
from forkd.supervisor.daemon import Readiness, sd_notify
from forkd.supervisor.loop import Loop, Timer
from forkd.supervisor.supervision import (
    Backoff,
    MasterState,
    SuspendDetector,
    WorkerProcess,
    WorkerState,
    clock,
    excuse,
    stable,
)
from forkd.supervisor.worker import served_by_worker

__all__ = ["HANDLED_SIGNALS", "Master", "MasterConfig", "MasterState"]

log = logs.get("master")

HANDLED_SIGNALS = ["HUP", "INT", "QUIT", "TERM", "TTIN", "TTOU", "USR1", "USR2", "WINCH", "CHLD"]


@dataclass
class MasterConfig:
    """The master's settings (from `forkd start`'s options)."""

    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    graceful_timeout: float = 30.0
    timeout: float = 30.0
    save_on_stop: bool = True
    control_path: str | None = None
    pidfile_path: str | None = None
    argv: list[str] = field(default_factory=list)  # `forkd start ...` arguments, for re-exec


class Master(ChangesMixin):
    """The arbiter. `run()` returns the process exit code."""

    def __init__(
        self,
        application: Any,
        config: MasterConfig,
        log_setup: Any = None,
        readiness: Readiness | None = None,
        pidfile: Any = None,
    ) -> None:
        self.application = application
        application.runtime = self
        self.tapfile: str = application.tapfile or os.path.abspath(f"{application.name}.tap")
        self.config = config
        self.log_setup = log_setup
        self.readiness = readiness or Readiness()
        self.pidfile = pidfile
        self.loop = Loop()
        self.workers: dict[int, WorkerProcess] = {}
        self.target = max(0, config.workers)
        self.generation = 1
        self.backoff = Backoff()
        self.suspend = SuspendDetector()
        self.state = MasterState.STARTING
        self.started = time.time()
        self.exit_code = 0
        self.stop_reason: str | None = None
        self.save_on_stop = config.save_on_stop
        self.control: ControlServer | None = None
        self.helpers: dict[int, Any] = {}  # pid -> callback(status) for non-worker children
        self.master_ports = MasterPorts(self)  # ports served in this loop (telnet)
        self.init_changes()

    # -- the loop API the control plane uses ----------------------------------------------
    def add_reader(self, fileobj: Any, callback: Any) -> None:
        self.loop.add_reader(fileobj, callback)

    def remove_reader(self, fileobj: Any) -> None:
        self.loop.remove_reader(fileobj)

    def add_writer(self, fileobj: Any, callback: Any) -> None:
        self.loop.add_writer(fileobj, callback)

    def remove_writer(self, fileobj: Any) -> None:
        self.loop.remove_writer(fileobj)

    def call_later(self, delay: float, callback: Any) -> Timer:
        return self.loop.call_later(delay, callback)

    def now(self) -> float:
        """The master's clock, for the mixins: the one place a test fakes time."""
        return clock()

    # -- life -----------------------------------------------------------------------------
    def bind_ports(self) -> None:
        """Open every port (raises forkd.ports.PortError naming the address)."""
        opened = []
        try:
            for port in self.application.ports:
                if getattr(port, "socket", None) is None:
                    port.startListening()
                    opened.append(port)
        except BaseException:
            for port in opened:
                port.stopListening()
            raise
        for port in self.application.ports:
            self.serve_in_master(port)

    def serve_in_master(self, port: Any) -> None:
        """Ports whose factory says `servedByMaster` (telnet) are served in this loop."""
        if not served_by_worker(port) and port not in self.master_ports:
            self.master_ports.serve(port)

    def unserve_in_master(self, port: Any) -> None:
        self.master_ports.unserve(port)

    def start_control(self, fd: int | None = None) -> None:
        """Open the control socket if the control plane is installed (forkd.control.server)."""
        path = self.config.control_path
        if not path:
            return
        self.control = ControlServer(self, path, fd=fd)
        self.control.listen()

    def run(self) -> int:
        """Serve until stopped; return the exit code."""
        signals = [getattr(signal, f"SIG{name}") for name in HANDLED_SIGNALS]
        self.loop.watch_signals(signals)
        # a re-exec blocks them across execve (see forkd.supervisor.reexec): the handlers are in
        # place now, so what arrived meanwhile is delivered and queued like any signal
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        title = os.path.basename(self.tapfile)
        setproctitle.setproctitle(f"forkd: master [{title}]")
        log.info(
            "master starting: %s, %d worker(s), ports %s",
            self.tapfile,
            self.target,
            ", ".join(port_key(p) for p in self.application.ports),
        )
        gc.collect()
        gc.freeze()  # pages of objects made so far stay shared with the workers
        self.reap()  # after a re-exec, children may have exited meanwhile
        self.manage_workers()
        try:
            while not self.finished():
                self.iterate()
        finally:
            self.shutdown()
        return self.exit_code

    def iterate(self) -> None:
        timeout = self.loop.next_timeout()
        self.suspend.will_sleep(clock(), timeout)
        self.loop.poll(timeout)
        now = clock()
        suspended = self.suspend.woke(now)
        if suspended:
            log.warning("the master was suspended for %.1fs: heartbeat deadlines reset", suspended)
            excuse(list(self.workers.values()), now)
        self.dispatch_signals()
        self.loop.run_timers()
        self.check_workers(clock())
        self.manage_workers()
        self.check_changes()

    def finished(self) -> bool:
        return self.state is MasterState.STOPPING and not self.workers

    def shutdown(self) -> None:
        """Close the ports, save the shutdown tap, release the pidfile."""
        for worker in list(self.workers.values()):  # only after an internal error
            with contextlib.suppress(OSError):
                os.kill(worker.pid, signal.SIGKILL)
        if self.save_on_stop and self.exit_code == 0:
            try:
                self.application.save("shutdown")  # logged by applicationSaved
            except Exception as error:
                log.error("cannot save the shutdown tap: %s", error)
        # one guard per step, each logged: a port that fails to unserve must still close,
        # and nothing here may keep the pidfile from being released
        for port in self.application.ports:
            self._cleanup(
                f"stop serving {port_key(port)} in the master", self.unserve_in_master, port
            )
            self._cleanup(f"close {port_key(port)}", port.stopListening)
        self.close_retired_ports()
        self.master_ports.close()
        if self.control is not None:
            self._cleanup("close the control socket", self.control.close)
        if self.pidfile is not None:
            self.pidfile.release()
        self.loop.close()
        log.info("master stopped%s", f": {self.stop_reason}" if self.stop_reason else "")

    @staticmethod
    def _cleanup(what: str, step: Any, *args: Any) -> None:
        """Run one shutdown step; a failure is logged with its context, never raised."""
        try:
            step(*args)
        except Exception:
            log.exception("shutdown: cannot %s", what)

    # -- signals --------------------------------------------------------------------------
    def dispatch_signals(self) -> None:
        while self.loop.signals:
            signum = self.loop.signals.popleft()
            name = signal.Signals(signum).name
            if name != "SIGCHLD":
                log.info("got %s", name)
            getattr(self, f"handle_{name[3:].lower()}")()

    def handle_chld(self) -> None:
        self.reap()

    def handle_term(self) -> None:
        self.stop(graceful=True)

    handle_int = handle_term

    def handle_quit(self) -> None:
        self.stop(graceful=False)

    def handle_hup(self) -> None:
        self.reload(False, self._log_result("reload"))

    handle_usr2 = handle_hup

    def handle_ttin(self) -> None:
        self.scale("+1")

    def handle_ttou(self) -> None:
        self.scale("-1")

    def handle_usr1(self) -> None:
        self.reopen_logs()

    def handle_winch(self) -> None:
        log.info("stopping all workers; the master keeps running (TTIN or scale to resume)")
        self.target = 0

    @staticmethod
    def _log_result(what: str) -> Any:
        def done(error: str | None, result: Any = None) -> None:
            if error:
                log.error("%s failed: %s", what, error)
            else:
                log.info("%s done", what)

        return done

    # -- workers --------------------------------------------------------------------------
    def current_workers(self) -> list[WorkerProcess]:
        return [
            w
            for w in self.workers.values()
            if w.generation == self.generation and w.alive_for_service
        ]

    def manage_workers(self) -> None:
        """Converge the current generation on the target count."""
        if self.state is MasterState.STOPPING:
            return
        now = clock()
        current = self.current_workers()
        if len(current) < self.target:
            if self.state is MasterState.STARTING or self.backoff.may_spawn(now):
                for _ in range(self.target - len(current)):
                    self.spawn_worker()
        elif len(current) > self.target:
            extra = sorted(current, key=lambda w: (w.state is WorkerState.READY, -w.number))
            for worker in extra[: len(current) - self.target]:
                self.stop_worker(worker, graceful=True)
        if self.backoff.failures and stable(list(self.workers.values()), now):
            log.info("workers are stable again: backoff reset")
            self.backoff.reset()
        if (
            self.state is MasterState.STARTING
            and current
            and all(w.state is WorkerState.READY for w in current)
            and len(current) == self.target
        ):
            self.state = MasterState.RUNNING
            log.info("ready: %d worker(s) serving", len(current))
            self.readiness.ready()
            sd_notify(f"READY=1\nMAINPID={os.getpid()}")

    def worker_failed(self, worker: WorkerProcess, reason: str) -> None:
        if self.state is MasterState.STARTING:
            self.fail(reason)
        elif self.state is MasterState.RUNNING and self.rollout_failed(worker, reason):
            return
        elif self.state is MasterState.RUNNING:
            delay = self.backoff.failed(clock())
            log.warning(
                "respawning in %.1fs (%d failure(s) in a row)", delay, self.backoff.failures
            )

    def fail(self, reason: str) -> None:
        """Startup failed: report the reason to `forkd start` and stop everything now."""
        log.error("start failed: %s", reason)
        self.readiness.failed(reason)
        self.exit_code = 1
        self.stop_reason = reason
        self.stop(graceful=False)

    # -- the control plane's verbs that are not live changes ------------------------------
    def stop(self, graceful: bool = True) -> None:
        if self.state is MasterState.STOPPING:
            if not graceful:  # a second, harder stop: cut the drain short
                for worker in self.workers.values():
                    self.kill(worker.pid, signal.SIGQUIT)
            return
        self.state = MasterState.STOPPING
        self.abandon_changes("the master is stopping")
        sd_notify("STOPPING=1")
        log.info("stopping (%s)", "graceful" if graceful else "fast")
        for worker in list(self.workers.values()):
            # One still booting has no connection to drain, and may be stuck in its
            # factories' startFactory: waiting the graceful timeout for it only delays the stop.
            drain = graceful and worker.state is not WorkerState.BOOTING
            worker.state = WorkerState.BOOTING  # so stop_worker acts even on stopping ones
            self.stop_worker(worker, drain)

    def scale(self, spec: str) -> int:
        """ "N", "+N" or "-N" workers; returns the new target (at least 0)."""
        text = str(spec).strip()
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"bad worker count {spec!r}: use N, +N or -N") from None
        target = self.target + number if text[:1] in "+-" else number
        self.target = max(0, target)
        log.info("target worker count: %d", self.target)
        return self.target

    def reopen_logs(self) -> None:
        if self.log_setup is not None:
            self.log_setup.reopen()
        for worker in self.workers.values():
            self.kill(worker.pid, signal.SIGUSR1)
        log.info("log files reopened")

    def status(self) -> dict[str, Any]:
        """JSON-able state for `forkctl status` (fields in docs/INTERNALS.md)."""
        from forkd.supervisor.status import master_status

        return master_status(self)
