"""The master: binds the ports, forks the workers, and supervises them for as long as it runs.

One thread, one `Loop`. Each iteration: wait for files or the next timer; notice if we
were suspended; run file callbacks (worker channels, control socket); dispatch queued
signals to `handle_<signal>`; run timers; check heartbeats; converge the worker set on the
target (`manage_workers`); finish a rollout whose new generation is ready. Decisions about
time are made by `forkd.supervisor.supervision` (pure logic) on the loop's clock.

The master is one class that owns its parts, each in its own module:

- `pool` (`WorkerPool`): the worker processes: spawn, messages, heartbeats, stop, reap;
- `port_changes` (`PortChanges`): ports added and removed live, with acknowledgements;
- `rollouts` (`Rollouts`): restart and reload generations, and their rollback;
- `master_ports` (`MasterPorts`) and `control` (`ControlServer`): the control plane, which
  sees the master only as `forkd.control.api.MasterAPI`;
- `reloader` (`Reloader`, with `--reload` only): the source watcher process, which asks
  for a reload over the control socket when the application's code changes.

A worker's exit goes pool -> `worker_failed` here -> `rollouts.failed` or the backoff, and
pool -> `worker_gone` here -> `port_changes.worker_gone`.
"""

from __future__ import annotations

import base64
import gc
import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# Imported here, not where used: after `-u` drops privileges, modules the new user may not
# read (a Python installed under /root) can no longer be imported.
import psutil  # noqa: F401  (forkd.supervisor.status reads worker RSS with it)
import setproctitle

from forkd.control.api import Done
from forkd.control.commands import scale as scale_spec
from forkd.control.masterports import MasterPorts
from forkd.control.metrics_http import MetricsFactory
from forkd.control.server import ControlServer
from forkd.ports import PortError, TCPPort, port_key
from forkd.supervisor import logs, metrics, reexec, spawn, status
from forkd.supervisor.channel import Channel
from forkd.supervisor.daemon import Readiness, sd_notify
from forkd.supervisor.logs import LogSetup
from forkd.supervisor.loop import Loop, Timer
from forkd.supervisor.metrics import MasterMetrics
from forkd.supervisor.pidfile import PidFile
from forkd.supervisor.port_changes import PortChanges, call
from forkd.supervisor.recycling import RecycleLimits, Recycler
from forkd.supervisor.reloader import Reloader, ReloadSettings
from forkd.supervisor.rollout import Rollouts
from forkd.supervisor.supervision import (
    MasterState,
    SlotBackoff,
    SuspendDetector,
    WorkerProcess,
    WorkerState,
    excuse,
    failed_early,
)
from forkd.supervisor.worker import HEARTBEAT_INTERVAL, WorkerSettings, served_by_worker
from forkd.supervisor.workers import WorkerPool

__all__ = ["HANDLED_SIGNALS", "Master", "MasterConfig", "MasterState"]

log = logs.get("master")

HANDLED_SIGNALS = ["HUP", "INT", "QUIT", "TERM", "TTIN", "TTOU", "USR1", "USR2", "WINCH", "CHLD"]
LAG_PROBE = 1.0  # seconds between the master loop's lag probes
DEFAULT_GRACEFUL_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 30.0


@dataclass
class MasterConfig:
    """The master's settings (from `forkd start`'s options, whose defaults these are)."""

    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    save_on_stop: bool = True
    control_path: str | None = None
    pidfile_path: str | None = None
    metrics: str | None = None  # HOST:PORT of /metrics, /livez and /readyz
    max_requests: int = 0  # recycling limits (forkd.supervisor.recycling); 0 is off
    max_requests_jitter: int = 0
    max_rss: float = 0.0  # MiB
    max_lifetime: float = 0.0  # seconds
    shutdown_delay: float = 0.0  # seconds between readiness failing and the drain, on TERM
    argv: list[str] = field(default_factory=list)  # `forkd start ...` arguments, for re-exec
    reload: ReloadSettings | None = None  # --reload: what the source watcher watches

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MasterConfig:
        """The config `asdict` wrote into a re-exec's state (forkd.supervisor.resume)."""
        settings = dict(state)
        reload = settings.pop("reload", None)
        return cls(**settings, reload=ReloadSettings(**reload) if reload else None)


class Master:
    """The arbiter. `run()` returns the process exit code."""

    def __init__(
        self,
        application: Any,
        config: MasterConfig,
        log_setup: LogSetup | None = None,
        readiness: Readiness | None = None,
        pidfile: PidFile | None = None,
        loop: Loop | None = None,
    ) -> None:
        self.application = application
        application.runtime = self
        self.tapfile: str = application.tapPath()  # absolute: fixed before any chdir
        self.config = config
        self.log_setup = log_setup
        self.readiness = readiness or Readiness()
        self.pidfile = pidfile
        self.loop = loop or Loop()
        self.pool = WorkerPool(self.loop, self, self._fork, config.graceful_timeout, config.timeout)
        self.master_ports = MasterPorts(self)  # ports served in this loop (telnet)
        self.port_changes = PortChanges(self.pool, self.master_ports)
        self.metrics = MasterMetrics()
        self.rollouts = Rollouts(self.pool, self.metrics)
        self.metrics_port: Any = None  # the listening port of --metrics
        self.recycler = Recycler(
            self.pool,
            RecycleLimits(
                config.max_requests, config.max_requests_jitter, config.max_rss, config.max_lifetime
            ),
        )
        self.delaying_stop: Timer | None = None  # --shutdown-delay running: not ready
        self.control: ControlServer | None = None
        self.reloader: Reloader | None = None
        if config.reload is not None and config.control_path:
            self.reloader = Reloader(
                config.reload,
                self.pool,
                config.control_path,
                log_setup.path if log_setup is not None else None,
                os.path.basename(self.tapfile),
            )
        self.target = max(0, config.workers)
        self.backoff = SlotBackoff()  # respawn delays of slots failing early
        self.suspend = SuspendDetector()
        self.state = MasterState.STARTING
        self.started = time.time()
        self.exit_code = 0
        self.stop_reason: str | None = None
        self.save_on_stop = config.save_on_stop
        self.unsaved = False
        self._next_done: Done | None = None  # for the portAdded/portRemoved hooks

    @property
    def workers(self) -> dict[int, WorkerProcess]:
        return self.pool.workers

    @property
    def generation(self) -> int:
        return self.pool.generation

    # -- the loop, as the control plane uses it -------------------------------------------
    def add_reader(self, fileobj: Any, callback: Callable[[], None]) -> None:
        self.loop.add_reader(fileobj, callback)

    def remove_reader(self, fileobj: Any) -> None:
        self.loop.remove_reader(fileobj)

    def add_writer(self, fileobj: Any, callback: Callable[[], None]) -> None:
        self.loop.add_writer(fileobj, callback)

    def remove_writer(self, fileobj: Any) -> None:
        self.loop.remove_writer(fileobj)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
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
        """Ports whose factory says `servedByMaster` (telnet) are served in this loop."""
        if not served_by_worker(port) and port not in self.master_ports:
            self.master_ports.serve(port)

    def serve_metrics(self, fd: int | None = None) -> None:
        """Serve /metrics, /livez and /readyz on `config.metrics` (HOST:PORT) in this
        loop, or on `fd`, the same socket adopted after a re-exec."""
        if not self.config.metrics:
            return
        host, _, number = self.config.metrics.rpartition(":")
        port = TCPPort(int(number), MetricsFactory(), interface=host.strip("[]"))
        if fd is None:
            port.startListening()
        else:
            port.adopt(fd)
        self.metrics_port = port
        self.master_ports.serve(port)
        self._probe_loop_lag(self.loop.clock())

    def _probe_loop_lag(self, expected: float) -> None:
        """How late a timer fires is how long the loop was busy (or the host starved it)."""
        now = self.loop.clock()
        self.metrics.loop_lag = max(0.0, now - expected)
        due = now + LAG_PROBE
        self.loop.call_later(LAG_PROBE, lambda: self._probe_loop_lag(due))

    def metrics_exposition(self) -> bytes:
        return metrics.exposition(self)

    def ready(self) -> bool:
        """Whether a load balancer should send traffic: running, not about to stop, and a
        ready worker of the serving generation for every worker-served port."""
        if self.state is not MasterState.RUNNING or self.delaying_stop is not None:
            return False
        generation = self.pool.generation  # a retiring worker (recycling) still serves
        serving = [
            w
            for w in self.pool.all()
            if w.generation == generation and w.state is WorkerState.READY
        ]
        has_worker_ports = any(served_by_worker(p) for p in self.application.ports)
        return bool(serving) or not has_worker_ports

    def start_control(self, fd: int | None = None, owner: int | None = None) -> None:
        """Open the control socket (or adopt `fd`, after a re-exec) when one is configured;
        `owner` is the uid the master is about to become, which may then use it."""
        if self.config.control_path:
            self.control = ControlServer(self, self.config.control_path, fd=fd, owner=owner)
            self.control.listen()

    def run(self) -> int:
        """Serve until stopped; return the exit code."""
        signals = [getattr(signal, f"SIG{name}") for name in HANDLED_SIGNALS]
        self.loop.watch_signals(signals)
        # a re-exec blocks them across execve (see reexec.exec_image): the handlers are in
        # place now, so what arrived meanwhile is delivered and queued like any signal
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        setproctitle.setproctitle(f"forkd: master [{os.path.basename(self.tapfile)}]")
        log.info(
            "master starting: %s, %d worker(s), ports %s",
            self.tapfile,
            self.target,
            ", ".join(port_key(p) for p in self.application.ports),
        )
        gc.collect()
        gc.freeze()  # pages of objects made so far stay shared with the workers
        self.pool.reap()  # after a re-exec, children may have exited meanwhile
        self.manage_workers()
        self._watchdog()
        if self.state is MasterState.RUNNING:  # re-executed: the watcher may have died
            self.start_reloader()
        try:
            while not self.finished():
                self.iterate()
        finally:
            self.shutdown()
        return self.exit_code

    def _watchdog(self) -> None:
        """systemd's WatchdogSec=: WATCHDOG=1 at half the interval, from this loop, so a
        master that hangs is restarted by systemd (sd_watchdog_enabled(3))."""
        usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
            return
        interval = int(usec) / 2e6

        def beat() -> None:
            sd_notify("WATCHDOG=1")
            self.loop.call_later(interval, beat)

        beat()

    def iterate(self) -> None:
        clock = self.loop.clock
        timeout = self.loop.next_timeout()
        self.suspend.will_sleep(clock(), timeout)
        self.loop.poll(timeout)
        now = clock()
        suspended = self.suspend.woke(now)
        if suspended:
            log.warning("the master was suspended for %.1fs: heartbeat deadlines reset", suspended)
            excuse(self.pool.all(), now)
        self.dispatch_signals()
        self.loop.run_timers()
        self.pool.check(clock())
        self.manage_workers()
        if self.state is MasterState.RUNNING:
            self.rollouts.check(self.target)
            self.recycler.check(clock(), self.target, self.rollouts.busy)

    def finished(self) -> bool:
        return self.state is MasterState.STOPPING and not self.pool.workers

    def shutdown(self) -> None:
        """Close the ports, save the shutdown tap, release the pidfile."""
        self.pool.signal_all(signal.SIGKILL)  # only after an internal error are any left
        if self.save_on_stop and self.exit_code == 0:
            try:
                self.application.save("shutdown")  # logged by applicationSaved
            except Exception as error:
                log.error("cannot save the shutdown tap: %s", error)
        # one guard per step, each logged: a port that fails to unserve must still close,
        # and nothing here may keep the pidfile from being released
        self.stop_listening()
        self._cleanup("stop the master-served ports", self.master_ports.close)
        if self.reloader is not None:
            self._cleanup("stop the source watcher", self.reloader.close)
        if self.control is not None:
            self._cleanup("close the control socket", self.control.close)
        if self.pidfile is not None:
            self._cleanup("release the pidfile", self.pidfile.release)
        self.loop.close()
        log.info("master stopped%s", f": {self.stop_reason}" if self.stop_reason else "")

    @staticmethod
    def _cleanup(what: str, step: Callable[..., Any], *args: Any) -> None:
        """Run one shutdown step; a failure is logged with its context, never raised."""
        try:
            step(*args)
        except Exception:
            log.exception("shutdown: cannot %s", what)

    # -- signals --------------------------------------------------------------------------
    def dispatch_signals(self) -> None:
        while self.loop.signals:
            name = signal.Signals(self.loop.signals.popleft()).name
            if name != "SIGCHLD":
                log.info("got %s", name)
            getattr(self, f"handle_{name[3:].lower()}")()

    def handle_chld(self) -> None:
        self.pool.reap()

    def handle_term(self) -> None:
        delay = self.config.shutdown_delay
        if delay > 0 and self.state is MasterState.RUNNING and self.delaying_stop is None:
            # Kubernetes: readiness fails now, the ports serve on while the endpoints
            # controller and the load balancers stop sending, then the drain begins
            log.info("stopping in %gs (--shutdown-delay): /readyz answers 503 now", delay)
            self.delaying_stop = self.loop.call_later(delay, lambda: self.stop(graceful=True))
            return
        self.stop(graceful=True)

    handle_int = handle_term

    def handle_quit(self) -> None:
        self.stop(graceful=False)

    def handle_hup(self) -> None:
        self.reload(False, self.log_result("reload"))

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
    def log_result(what: str) -> Done:
        """A `done` for a change nobody waits on (a signal): its outcome goes to the log."""

        def done(error: str | None, result: Any = None) -> None:
            if error:
                log.error("%s failed: %s", what, error)
            else:
                log.info("%s done", what)

        return done

    # -- workers --------------------------------------------------------------------------
    def _fork(self, number: int) -> tuple[int, Channel]:
        settings = WorkerSettings(
            number=number,
            title=os.path.basename(self.tapfile),
            graceful_timeout=self.config.graceful_timeout,
            # several beats per timeout: one late timer must not look like a hung worker
            heartbeat_interval=min(HEARTBEAT_INTERVAL, self.config.timeout / 4),
        )
        self.metrics.count("worker_starts")
        return spawn.fork_worker(self.application, settings, self.log_setup, self.readiness)

    def manage_workers(self) -> None:
        """Converge the current generation on the target count."""
        if self.state is MasterState.STOPPING:
            return
        now = self.loop.clock()
        current = self.pool.current()
        if len(current) < self.target:
            waiting = self.backoff.waiting(now) if self.state is MasterState.RUNNING else set()
            for _ in range(self.target - len(current) - len(waiting)):
                self.pool.spawn(exclude=waiting)
        elif len(current) > self.target:
            extra = sorted(current, key=lambda w: (w.state is WorkerState.READY, -w.number))
            for worker in extra[: len(current) - self.target]:
                self.pool.stop(worker, graceful=True, reason="scale")
        for worker in current:
            if worker.number in self.backoff.slots and not failed_early(worker, now):
                log.info("worker %d is stable again: its backoff is reset", worker.number)
                self.backoff.clear(worker.number)
        if (
            self.state is MasterState.STARTING
            and current
            and all(w.state is WorkerState.READY for w in current)
            and len(current) == self.target
        ):
            self.state = MasterState.RUNNING
            log.info("ready: %d worker(s) serving", len(current))
            ports = ", ".join(port_key(p) for p in self.application.ports) or "no ports"
            self.readiness.ready(
                f"serving {self.tapfile} (pid {os.getpid()}): {ports}, {len(current)} worker(s)"
            )
            sd_notify(
                f"READY=1\nMAINPID={os.getpid()}\n"
                f"STATUS=serving {ports} with {len(current)} worker(s)"
            )
            self.start_reloader()

    def start_reloader(self) -> None:
        """With --reload, once the application serves (a reload asked for while it starts
        would race the start): a change saved before then waits for the next one."""
        if self.reloader is not None:
            self.reloader.start()

    # what the pool reports (workers.PoolOwner)
    def worker_failed(self, worker: WorkerProcess, reason: str) -> None:
        if self.state is MasterState.STARTING:
            self.fail(reason)
        elif self.state is MasterState.RUNNING and not self.rollouts.failed(worker, reason):
            now = self.loop.clock()
            if not failed_early(worker, now):  # it was serving: replace it at once
                self.backoff.clear(worker.number)
                return
            delay = self.backoff.failed(worker.number, now)
            failures = self.backoff.slots[worker.number].failures
            log.warning(
                "respawning worker %d in %.1fs (%d early failure(s) in a row)",
                worker.number,
                delay,
                failures,
            )

    def worker_reported(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        self.port_changes.acknowledged(worker, message)

    def worker_gone(self, worker: WorkerProcess) -> None:
        self.metrics.worker_exited(worker, worker.exit_reason)
        self.recycler.forget(worker)
        self.port_changes.worker_gone(worker)

    def fail(self, reason: str) -> None:
        """Startup failed: report the reason to `forkd start` and stop everything now."""
        log.error("start failed: %s", reason)
        self.exit_code = 1
        self.stop_reason = reason
        self.stop(graceful=False)
        # Nothing was announced as serving, so nothing is lost by not waiting: a worker
        # stuck booting would hold SIGQUIT for the whole kill grace, and with it the
        # pidfile and the control socket, and a retry right away would say "already
        # running". Kill them now and let go of both before `forkd start` hears of it.
        self.pool.signal_all(signal.SIGKILL)
        for worker in self.pool.all():
            worker.kill_at = None
        if self.control is not None:
            self._cleanup("close the control socket", self.control.close)
            self.control = None
        if self.pidfile is not None:
            self._cleanup("release the pidfile", self.pidfile.release)
        self.readiness.failed(reason)

    # -- the Application's runtime hooks --------------------------------------------------
    def portAdded(self, port: Any) -> None:
        done = self._take_done(port)
        if getattr(port, "socket", None) is None:
            port.startListening()
        self.port_changes.add(port, done)

    def portRemoved(self, port: Any) -> None:
        self.port_changes.remove(port, self._take_done(port))

    def applicationSaved(self, path: str, tag: str | None) -> None:
        if tag is None:
            self.unsaved = False
        log.info("application saved to %s", path)

    def _take_done(self, port: Any) -> Done | None:
        """The `done` of the add_port/remove_port that caused this hook (None for the
        shell's `application.listenTCP`). Ports change between generations, never during
        a rollout: workers forked before the change and after it would disagree on what
        they serve, and a rollback would close a port the old workers were told to serve."""
        done, self._next_done = self._next_done, None
        if self.rollouts.busy:
            raise PortError(
                f"cannot change {port_key(port)} while a restart or reload is in progress; "
                "try again when it has finished"
            )
        return done

    # -- the control plane's verbs (forkd.control.api.MasterAPI) --------------------------
    def add_port(self, port: Any, done: Done | None = None) -> None:
        """Bind `port` now (PortError at once if it cannot), add it to the application and
        have every worker serve it; `done` once each has acknowledged."""
        self._next_done = done
        try:
            self.application.addPort(port)
        finally:
            self._next_done = None

    def remove_port(self, port: Any, done: Done | None = None) -> None:
        """Stop serving `port` (object, key or number) in every worker, then close it."""
        self._next_done = done
        try:
            self.application.removePort(port)
        finally:
            self._next_done = None

    def save(self, tag: str | None = None) -> str:
        return str(self.application.save(tag))

    def application_changed(self) -> None:
        """The shell changed the application: the workers get it by a rolling restart."""
        self.unsaved = True
        self.restart(None)

    def restart(self, done: Done | None) -> None:
        if self.state is MasterState.STOPPING:
            call(done, "the master is stopping")
        else:
            self.rollouts.restart(done)

    def reload(self, discard: bool, done: Done | None) -> None:
        """Validate the tap on disk in a child, then re-exec in place."""
        refusal = None
        if self.state is MasterState.STOPPING:
            refusal = "the master is stopping"
        elif self.rollouts.busy:
            refusal = "a restart or reload is already in progress"
        elif self.unsaved and not discard:
            refusal = (
                "the running application has unsaved changes; save them first "
                "or reload with --discard to throw them away"
            )
        if refusal is not None:
            log.warning("reload refused: %s", refusal)
            call(done, refusal)
        else:
            self.rollouts.reload(
                self.tapfile,
                done,
                exec_image=self.reexec,
                stopping=lambda: self.state is MasterState.STOPPING,
            )

    def stop(self, graceful: bool = True) -> None:
        if self.state is MasterState.STOPPING:
            if not graceful:  # a second, harder stop: cut the drain short
                self.pool.signal_all(signal.SIGQUIT)
            return
        self.state = MasterState.STOPPING
        if self.delaying_stop is not None:
            self.delaying_stop.cancel()
        self.rollouts.abandon("the master is stopping")
        if self.reloader is not None:
            self.reloader.stop()
        sd_notify("STOPPING=1")
        log.info("stopping (%s)", "graceful" if graceful else "fast")
        self.pool.stop_all(graceful)
        self.stop_listening()

    def stop_listening(self) -> None:
        """Close every listening socket now, as gunicorn and nginx do on a stop (not on a
        reload): the workers close their copies as they start draining, so with the
        master's closed too a new connection is refused at once (a load balancer retries
        elsewhere) instead of waiting in the backlog for the whole drain and then being
        reset. Connections already accepted finish as before."""
        for port in self.application.ports:
            key = port_key(port)
            self._cleanup(f"stop serving {key} in the master", self.master_ports.unserve, port)
            self._cleanup(f"close {key}", port.stopListening)
        self._cleanup("close the retired ports", self.rollouts.close_retired)

    def scale(self, spec: str) -> int:
        """ "N", "+N" or "-N" workers; returns the new target (at least 0)."""
        self.target = scale_spec.parse(spec, self.target)
        log.info("target worker count: %d", self.target)
        return self.target

    def reopen_logs(self) -> None:
        if self.log_setup is not None:
            self.log_setup.reopen()
        self.pool.signal_all(signal.SIGUSR1)
        log.info("log files reopened")

    def status(self) -> dict[str, Any]:
        """JSON-able state for `forkctl status` (fields in docs/INTERNALS.md)."""
        return {
            "pid": os.getpid(),
            "state": self.state.value,
            "started": self.started,
            "uptime": round(time.time() - self.started, 3),
            "tapfile": self.tapfile,
            "generation": self.generation,
            "workers": status.workers(self.pool.all()),
            "target_workers": self.target,
            "ports": status.ports(self.application.ports),
            "backoff": self.backoff.status(self.loop.clock()),
            "unsaved": self.unsaved,
            "ready": self.ready(),
        }

    # -- reload ---------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, Any], list[int]]:
        """Everything the re-executed image needs (JSON-able), and the descriptors to keep
        open across the exec for it (see forkd.supervisor.resume)."""
        workers, fds = self.pool.snapshot()
        state: dict[str, Any] = {
            "tapfile": self.tapfile,
            "config": asdict(self.config),
            "target": self.target,
            "generation": self.generation,
            "started": self.started,
            "application": base64.b64encode(pickle.dumps(self.application)).decode(),
            "ports": {},
            "workers": workers,
            "control_fd": None,
            "control": None,
            # still this pid's child after the exec: the new image adopts it
            "reloader_pid": self.reloader.pid if self.reloader is not None else None,
            "pidfile_fd": None,
            "log": self.log_setup.path if self.log_setup is not None else None,
            "log_redirect": self.log_setup.redirect_std if self.log_setup is not None else False,
            "log_format": self.log_setup.log_format if self.log_setup is not None else "text",
            "metrics": self.metrics.snapshot(self.pool.all()),
            "metrics_fd": None,
        }
        if self.metrics_port is not None and self.metrics_port.socket is not None:
            state["metrics_fd"] = self.metrics_port.fileno()
            fds.append(state["metrics_fd"])
        for port in self.application.ports:
            if getattr(port, "socket", None) is not None:
                state["ports"][port_key(port)] = port.fileno()
                fds.append(port.fileno())
        if self.control is not None:
            state["control_fd"] = self.control.fileno()
            state["control"] = self.control.reexec_state()  # the requests still waiting
            fds += [state["control_fd"], *state["control"]["fds"]]
        if self.pidfile is not None and self.pidfile.fd is not None:
            state["pidfile_fd"] = self.pidfile.fd
            fds.append(self.pidfile.fd)
        return state, fds

    def reexec(self) -> str:
        """Exec the new master image; returns (an error) only if the exec failed."""
        state, fds = self.snapshot()
        signals = {getattr(signal, f"SIG{name}") for name in HANDLED_SIGNALS}
        return reexec.exec_image(state, fds, self.config.argv, signals)
