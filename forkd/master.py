"""The master: binds the ports, forks the workers, and supervises them for as long as it runs.

One thread, one `forkd.loop.Loop`. Each iteration: wait for files or the next timer; notice
if we were suspended; run file callbacks (worker channels, control socket); dispatch queued
signals to `handle_<signal>`; run timers; check heartbeats; converge the worker set on the
target (`manage_workers`). Decisions are made by `forkd.supervision` (pure logic).

Before fork / after fork: the master binds every port and calls `gc.freeze()` before it
forks; a new worker process closes every master-only descriptor (other workers' channels,
the control socket, the selector, the pidfile) and then belongs to `forkd.worker`.

Live changes (ports, rolling restart, reload) are in `forkd.changes`, mixed in here.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

# Imported here, not where used: after `-u` drops privileges, modules the new user may not
# read (a Python installed under /root) can no longer be imported.
import psutil  # noqa: F401  (forkd.status reads worker RSS with it)
import setproctitle

from forkd import logs
from forkd.changes import ChangesMixin
from forkd.channel import Channel, ChannelClosed, ChannelError
from forkd.daemon import Readiness, sd_notify
from forkd.loop import Loop, Timer
from forkd.ports import port_key
from forkd.supervision import (
    KILL_GRACE,
    Backoff,
    SuspendDetector,
    WorkerProcess,
    WorkerState,
    clock,
    describe_status,
    excuse,
    kills_due,
    overdue,
    stable,
)
from forkd.worker import EXIT_BOOT_FAILED, Worker, WorkerSettings, served_by_worker

log = logs.get("master")

HANDLED_SIGNALS = ["HUP", "INT", "QUIT", "TERM", "TTIN", "TTOU", "USR1", "USR2", "WINCH", "CHLD"]


class MasterState(enum.Enum):
    STARTING = "starting"  # waiting for the first workers to be ready
    RUNNING = "running"
    STOPPING = "stopping"


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
        self.control: Any = None
        self.helpers: dict[int, Any] = {}  # pid -> callback(status) for non-worker children
        self.master_servers: dict[str, Any] = {}  # key -> masterports server
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
        """Ports whose factory says `servedByMaster` (telnet) run in the control plane."""
        if served_by_worker(port) or port_key(port) in self.master_servers:
            return
        serve = getattr(self.control, "serve_port", None)
        if serve is not None:  # the control plane owns master-served ports when present
            serve(port)
            return
        try:
            from forkd import masterports
        except ImportError:
            log.warning("%s wants the master to serve it, but no control plane can", port)
            return
        self.master_servers[port_key(port)] = masterports.serve(self, port)

    def unserve_in_master(self, port: Any) -> None:
        unserve = getattr(self.control, "unserve_port", None)
        if unserve is not None:
            unserve(port)
        server = self.master_servers.pop(port_key(port), None)
        if server is not None:
            server.stop()

    def start_control(self, fd: int | None = None) -> None:
        """Open the control socket if the control plane is installed (forkd.control)."""
        path = self.config.control_path
        if not path:
            return
        try:
            from forkd.control import ControlServer
        except ImportError:
            return
        self.control = ControlServer(self, path, fd=fd)
        self.control.listen()

    def run(self) -> int:
        """Serve until stopped; return the exit code."""
        self.loop.watch_signals([getattr(signal, f"SIG{name}") for name in HANDLED_SIGNALS])
        title = os.path.basename(self.tapfile)
        setproctitle.setproctitle(f"forkd: master [{title}]")
        log.info(
            "master starting: %s, %d worker(s), ports %s",
            self.tapfile, self.target, ", ".join(port_key(p) for p in self.application.ports),
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
        for port in self.application.ports:
            with contextlib.suppress(Exception):
                self.unserve_in_master(port)
                port.stopListening()
        self.close_retired_ports()
        if self.control is not None:
            with contextlib.suppress(Exception):
                self.control.close()
        if self.pidfile is not None:
            self.pidfile.release()
        self.loop.close()
        log.info("master stopped%s", f": {self.stop_reason}" if self.stop_reason else "")

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
        if self.state is MasterState.STARTING and current and all(
            w.state is WorkerState.READY for w in current
        ) and len(current) == self.target:
            self.state = MasterState.RUNNING
            log.info("ready: %d worker(s) serving", len(current))
            self.readiness.ready()
            sd_notify(f"READY=1\nMAINPID={os.getpid()}")

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
            )
            Worker(self.application, worker_end, settings, self.log_setup).run()
        worker_end.close()
        worker = WorkerProcess(pid, number, self.generation, master_end, clock())
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
        worker.kill_at = clock() + grace + KILL_GRACE
        self.kill(worker.pid, signal.SIGTERM if graceful else signal.SIGQUIT)

    def kill(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # gone: the reaper will hear of it
            os.kill(pid, signum)

    def check_workers(self, now: float) -> None:
        for worker in overdue(list(self.workers.values()), now, self.config.timeout):
            log.error(
                "worker %d (pid %d) sent no heartbeat for %.1fs: aborting it (SIGABRT)",
                worker.number, worker.pid, now - worker.last_beat,
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
        now = clock()
        if op == "heartbeat":
            worker.beat(now, message)
        elif op == "ready":
            worker.beat(now, message)
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
            log.error("%s %s, %s", what, text, served)
            self.worker_failed(worker, f"worker {worker.number} {text} during boot")
        self.change_worker_exited(worker)

    def worker_failed(self, worker: WorkerProcess, reason: str) -> None:
        if self.state is MasterState.STARTING:
            self.fail(reason)
        elif self.state is MasterState.RUNNING and self.rollout_failed(worker, reason):
            return
        elif self.state is MasterState.RUNNING:
            delay = self.backoff.failed(clock())
            log.warning("respawning in %.1fs (%d failure(s) in a row)", delay,
                        self.backoff.failures)

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
        sd_notify("STOPPING=1")
        log.info("stopping (%s)", "graceful" if graceful else "fast")
        for worker in list(self.workers.values()):
            worker.state = WorkerState.BOOTING  # so stop_worker acts even on stopping ones
            self.stop_worker(worker, graceful)

    def scale(self, spec: str) -> int:
        """"N", "+N" or "-N" workers; returns the new target (at least 0)."""
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
        from forkd.status import master_status

        return master_status(self)
