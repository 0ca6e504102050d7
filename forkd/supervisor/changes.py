"""Live changes of a running master: add and remove ports, rolling restart, reload.

A mixin of `forkd.supervisor.master.Master` (it uses the master's loop, workers and
state), kept apart so the arbiter stays readable. Three mechanisms:

- *Port changes*: the master binds the port and sends the descriptor (SCM_RIGHTS) and the
  pickled port to every worker, which adopts and serves it and acknowledges; removal asks
  each worker to stop accepting on it, then closes the master's socket. `done` is called
  when every worker has answered (or exited).
- *Rollout* (restart and reload): the generation number goes up, `manage_workers` forks the
  new generation, and once all of it is ready the old generation is drained. The listening
  sockets never close, so nothing is refused meanwhile. A new worker that fails before it is
  ready aborts the rollout: the new generation is stopped and the old one keeps serving.
- *Reload*: validate the tap on disk in a child process, then re-exec the master in place
  (`forkd.supervisor.reexec`); the new image adopts everything and runs a rollout.
"""

from __future__ import annotations

import base64
import contextlib
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from forkd.ports import PortError, port_key
from forkd.supervisor import logs
from forkd.supervisor.channel import ChannelClosed
from forkd.supervisor.daemon import sd_notify
from forkd.supervisor.supervision import MasterState, WorkerProcess, WorkerState
from forkd.supervisor.worker import served_by_worker
from forkd.supervisor.workers import WorkerProcessesMixin

log = logs.get("master")

Done = Callable[..., Any]
VALIDATE_TIMEOUT = 60.0


@dataclass
class PortChange:
    """A port being added or removed: the workers that have yet to acknowledge."""

    key: str
    kind: str  # "add" or "remove"
    port: Any
    waiting: set[int]
    done: Done | None
    errors: list[str] = field(default_factory=list)


@dataclass
class Rollout:
    """A new generation replacing the old one."""

    kind: str  # "restart" or "reload"
    old_generation: int
    done: list[Done]
    rollback: Callable[[], None] | None = None


def call(done: Done | None, error: str | None, result: Any = None) -> None:
    if done is None:
        return
    try:
        done(error, result)
    except Exception:
        log.exception("a completion callback failed")


class ChangesMixin(WorkerProcessesMixin):
    """Port changes, restart and reload for the Master (see the module docstring)."""

    # provided by Master
    target: int
    control: Any
    state: MasterState
    serve_in_master: Callable[[Any], None]
    unserve_in_master: Callable[[Any], None]
    current_workers: Callable[[], list[WorkerProcess]]

    def init_changes(self) -> None:
        self.unsaved = False
        self.port_changes: list[PortChange] = []
        self.rollout: Rollout | None = None
        self.reloading: Done | None = None
        self.retired_sockets: list[Any] = []
        self._next_done: Done | None = None

    # -- the Application runtime hooks ----------------------------------------------------
    def _refuse_port_change_midway(self, port: Any) -> None:
        """Ports change between generations, not during a rollout: workers forked before
        the change and after it would disagree on what they serve, and a rollback would
        close a port the old workers were told to serve."""
        if self.rollout is not None or self.reloading is not None:
            self._next_done = None
            raise PortError(
                f"cannot change {port_key(port)} while a restart or reload is in progress; "
                "try again when it has finished"
            )

    def portAdded(self, port: Any) -> None:
        self._refuse_port_change_midway(port)
        done, self._next_done = self._next_done, None
        if getattr(port, "socket", None) is None:
            port.startListening()
        key = port_key(port)
        if not served_by_worker(port):
            self.serve_in_master(port)
            call(done, None, {"key": key, "workers": 0})
            return
        try:
            data = base64.b64encode(pickle.dumps(port)).decode()
        except Exception as error:
            port.stopListening()
            raise PortError(f"cannot hand {key} to the workers: {error}") from error
        change = PortChange(key, "add", port, set(), done)
        for worker in self.serving_workers():
            if self.send(worker, {"op": "add_port", "key": key, "port": data}, [port.fileno()]):
                change.waiting.add(worker.pid)
        log.info("port %s added; %d worker(s) to serve it", key, len(change.waiting))
        self._track(change)

    def portRemoved(self, port: Any) -> None:
        self._refuse_port_change_midway(port)
        done, self._next_done = self._next_done, None
        key = port_key(port)
        change = PortChange(key, "remove", port, set(), done)
        if served_by_worker(port):
            for worker in self.serving_workers():
                if self.send(worker, {"op": "remove_port", "key": key}):
                    change.waiting.add(worker.pid)
        else:
            self.unserve_in_master(port)
        log.info("port %s removed; %d worker(s) to stop serving it", key, len(change.waiting))
        self._track(change)

    def applicationSaved(self, path: str, tag: str | None) -> None:
        if tag is None:
            self.unsaved = False
        log.info("application saved to %s", path)

    # -- the control plane's verbs --------------------------------------------------------
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
        """Replace every worker by a new generation forked from the in-memory application."""
        if self.state is MasterState.STOPPING:
            call(done, "the master is stopping")
            return
        if self.rollout is not None and self.rollout.kind == "restart":
            if done is not None:
                self.rollout.done.append(done)
            return
        if self.rollout is not None or self.reloading is not None:
            call(done, "a reload is in progress")
            return
        self.begin_rollout("restart", done)

    def begin_rollout(
        self, kind: str, done: Done | None, rollback: Callable[[], None] | None = None
    ) -> None:
        self.rollout = Rollout(kind, self.generation, [done] if done else [], rollback)
        self.generation += 1
        log.info("%s: starting generation %d", kind, self.generation)

    def reload(self, discard: bool, done: Done | None) -> None:
        """Validate the tap on disk in a child, then re-exec in place (see `reexec`)."""
        from forkd.supervisor import reexec

        if self.state is MasterState.STOPPING:
            call(done, "the master is stopping")
            return
        if self.rollout is not None or self.reloading is not None:
            call(done, "a restart or reload is already in progress")
            return
        if self.unsaved and not discard:
            call(
                done,
                "the running application has unsaved changes; save them first "
                "or reload with --discard to throw them away",
            )
            return
        try:
            pid, output = reexec.spawn_validator(self.tapfile)
        except OSError as error:
            call(done, f"cannot start the tap validator: {error}")
            return
        # systemd's reload protocol (sd_notify(3)): RELOADING=1 now, READY=1 once the new
        # generation serves or the reload failed, so `systemctl reload` waits for the end
        # (MONOTONIC_USEC is what Type=notify-reload requires with it)
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        self.reloading = done if done is not None else (lambda error, result=None: None)
        timer = self.loop.call_later(VALIDATE_TIMEOUT, lambda: self.kill(pid, signal.SIGKILL))

        def validated(status: int) -> None:
            timer.cancel()
            error = reexec.validation_result(output, status)
            if error is None and self.state is MasterState.STOPPING:
                # a stop came while the validator ran: the new image would forget it
                error = "the master is stopping"
            if error is not None:
                finished, self.reloading = self.reloading, None
                log.error("reload refused: %s", error)
                if self.state is not MasterState.STOPPING:
                    sd_notify("READY=1")
                call(finished, error)
                return
            error = reexec.reexec(self)  # returns only if the exec failed
            finished, self.reloading = self.reloading, None
            sd_notify("READY=1")
            call(finished, f"cannot re-execute the master: {error}")

        self.helpers[pid] = validated

    def abandon_changes(self, reason: str) -> None:
        """The master is stopping: answer the restart or reload in progress now, since no
        new generation will be waited for (its workers are being stopped with the rest)."""
        rollout, self.rollout = self.rollout, None
        if rollout is not None:
            log.info("%s abandoned: %s", rollout.kind, reason)
            for done in rollout.done:
                call(done, reason)
        # a reload still validating: its callback sees STOPPING and does not exec
        finished, self.reloading = self.reloading, None
        if finished is not None:
            log.info("reload abandoned: %s", reason)
            call(finished, reason)

    # -- bookkeeping, called by the master's loop -----------------------------------------
    def serving_workers(self) -> list[WorkerProcess]:
        return [
            w
            for w in self.workers.values()
            if w.state in (WorkerState.BOOTING, WorkerState.READY) and not w.channel.closed
        ]

    def send(
        self, worker: WorkerProcess, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
    ) -> bool:
        """Send to a worker without blocking the loop; False if its channel is gone."""
        try:
            worker.channel.send(message, fds)
        except ChannelClosed:
            return False
        if worker.channel.wants_write:

            def flush() -> None:
                try:
                    if not worker.channel.flush():
                        return
                except ChannelClosed:
                    # closed just now, so its number is not yet anyone else's: drop the
                    # whole registration while forgetting it still means this channel
                    self.loop.forget(worker.channel.fd)
                    return
                self.loop.remove_writer(worker.channel.fd)

            self.loop.add_writer(worker.channel.fd, flush)
        return True

    def _track(self, change: PortChange) -> None:
        self.port_changes.append(change)
        self._finish_port_changes()

    def _finish_port_changes(self) -> None:
        for change in [c for c in self.port_changes if not c.waiting]:
            self.port_changes.remove(change)
            if change.kind == "remove" and served_by_worker(change.port):
                change.port.stopListening()
            error = "; ".join(sorted(set(change.errors))) or None
            call(change.done, error, {"key": change.key})

    def on_change_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        op = message.get("op")
        kind = {"port_added": "add", "port_failed": "add", "port_removed": "remove"}.get(str(op))
        if kind is None:
            log.warning("worker %d sent an unknown message %r", worker.number, op)
            return
        for change in self.port_changes:
            if change.kind == kind and change.key == message.get("key"):
                change.waiting.discard(worker.pid)
                if op == "port_failed":
                    change.errors.append(f"worker {worker.number}: {message.get('error')}")
                break
        self._finish_port_changes()

    def change_worker_exited(self, worker: WorkerProcess) -> None:
        for change in self.port_changes:
            change.waiting.discard(worker.pid)
        self._finish_port_changes()

    def check_changes(self) -> None:
        """Finish a rollout once the whole new generation is ready."""
        rollout = self.rollout
        if rollout is None or self.state is not MasterState.RUNNING:
            return
        current = self.current_workers()
        if len(current) < self.target or any(w.state is not WorkerState.READY for w in current):
            return
        self.rollout = None
        for worker in list(self.workers.values()):
            if worker.generation != self.generation and worker.alive_for_service:
                self.stop_worker(worker, graceful=True)
        self.close_retired_ports()
        log.info("%s done: generation %d serves", rollout.kind, self.generation)
        if rollout.kind == "reload":
            sd_notify("READY=1")
        for done in rollout.done:
            call(done, None, {"generation": self.generation})

    def rollout_failed(self, worker: WorkerProcess, reason: str) -> bool:
        """A new-generation worker died before it was ready: roll back. True if handled."""
        rollout = self.rollout
        if rollout is None or worker.generation != self.generation:
            return False
        if worker.was_ready:  # crashed after ready: respawned with backoff, no rollback
            return False
        self.rollout = None
        for other in list(self.workers.values()):
            if other.generation == self.generation:
                self.stop_worker(other, graceful=False)
        self.generation = rollout.old_generation
        if rollout.rollback is not None:
            rollout.rollback()
        log.error(
            "%s rolled back (generation %d keeps serving): %s",
            rollout.kind,
            self.generation,
            reason,
        )
        if rollout.kind == "reload":
            sd_notify("READY=1")
        for done in rollout.done:
            call(done, reason)
        return True

    def close_retired_ports(self) -> None:
        for sock in self.retired_sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.retired_sockets = []
