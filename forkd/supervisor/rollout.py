"""Rollouts: a new generation of workers replacing the old one (restart and reload).

- *Restart*: the generation number goes up, `Master.manage_workers` forks the new
  generation, and once all of it is ready the old generation is drained. The listening
  sockets never close, so nothing is refused meanwhile.
- *Reload*: first the tap on disk is validated in a child process
  (`forkd.supervisor.reexec.spawn_validator`); if it loads, the master re-executes itself
  in place and the new image (`forkd.supervisor.resume`) starts a reload rollout.
- *Rollback*: a new-generation worker that fails before it is ready aborts the rollout:
  the new generation is stopped, the generation number goes back, and the old workers,
  which never stopped, keep serving (a reload also puts the old application back).

systemd hears of a reload (sd_notify(3)): RELOADING=1 when it starts, READY=1 once the new
generation serves or the reload failed, so `systemctl reload` waits for the end.
"""

from __future__ import annotations

import contextlib
import enum
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from forkd.control.api import Done
from forkd.supervisor import logs, reexec
from forkd.supervisor.daemon import sd_notify
from forkd.supervisor.metrics import MasterMetrics
from forkd.supervisor.port_changes import call
from forkd.supervisor.supervision import WorkerProcess, WorkerState
from forkd.supervisor.workers import WorkerPool

log = logs.get("master")

VALIDATE_TIMEOUT = 60.0


class RolloutKind(enum.StrEnum):
    RESTART = "restart"
    RELOAD = "reload"


@dataclass
class Rollout:
    """A new generation replacing the old one."""

    kind: RolloutKind
    old_generation: int
    done: list[Done]
    rollback: Callable[[], None] | None = None


class Rollouts:
    """The rollout in progress (at most one), and a reload still being validated."""

    def __init__(self, pool: WorkerPool, metrics: MasterMetrics | None = None) -> None:
        self.pool = pool
        self.metrics = metrics or MasterMetrics()  # outcomes, as forkd_rollouts_total
        self.current: Rollout | None = None
        self.reloading: Done | None = None  # validating; answered once the exec failed
        self.retired_sockets: list[socket.socket] = []  # closed when the rollout ends

    @property
    def busy(self) -> bool:
        return self.current is not None or self.reloading is not None

    def restart(self, done: Done | None) -> None:
        """Replace every worker by a new generation forked from the in-memory application."""
        if self.current is not None and self.current.kind is RolloutKind.RESTART:
            if done is not None:  # the same restart answers both
                self.current.done.append(done)
            return
        if self.busy:
            call(done, "a reload is in progress")
            return
        self.begin(RolloutKind.RESTART, done)

    def begin(
        self, kind: RolloutKind, done: Done | None, rollback: Callable[[], None] | None = None
    ) -> None:
        self.current = Rollout(kind, self.pool.generation, [done] if done else [], rollback)
        self.pool.generation += 1
        log.info("%s: starting generation %d", kind, self.pool.generation)

    def reload(
        self,
        tapfile: str,
        done: Done | None,
        exec_image: Callable[[], str],
        stopping: Callable[[], bool],
    ) -> None:
        """Validate `tapfile` in a child; if it loads, `exec_image()` (which returns only
        with the reason the exec failed). `stopping()` says a stop came meanwhile."""
        try:
            pid, output = reexec.spawn_validator(tapfile)
        except OSError as error:
            call(done, f"cannot start the tap validator: {error}")
            return
        # MONOTONIC_USEC is what Type=notify-reload requires with RELOADING=1
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        self.reloading = done if done is not None else (lambda error, result=None: None)
        timer = self.pool.loop.call_later(
            VALIDATE_TIMEOUT, lambda: self.pool.kill(pid, signal.SIGKILL)
        )

        def validated(status: int) -> None:
            timer.cancel()
            error = reexec.validation_result(output, status)
            if error is None and stopping():
                error = "the master is stopping"  # the new image would forget the stop
            if error is not None:
                finished, self.reloading = self.reloading, None
                log.error("reload refused: %s", error)
                self.metrics.count("rollouts|reload|refused")
                if not stopping():
                    sd_notify("READY=1")
                call(finished, error)
                return
            error = exec_image()  # returns only if the exec failed
            finished, self.reloading = self.reloading, None
            sd_notify("READY=1")
            call(finished, f"cannot re-execute the master: {error}")

        self.pool.helpers[pid] = validated

    def check(self, target: int) -> None:
        """Finish the rollout once the whole new generation is ready."""
        rollout = self.current
        if rollout is None:
            return
        current = self.pool.current()
        if len(current) < target or any(w.state is not WorkerState.READY for w in current):
            return
        self.current = None
        for worker in self.pool.all():
            if worker.generation != self.pool.generation and worker.alive_for_service:
                self.pool.stop(worker, graceful=True, reason=rollout.kind.value)
        self.close_retired()
        self.metrics.count(f"rollouts|{rollout.kind.value}|done")
        log.info("%s done: generation %d serves", rollout.kind, self.pool.generation)
        status = f"STATUS=generation {self.pool.generation} serving (after a {rollout.kind})"
        sd_notify(f"READY=1\n{status}" if rollout.kind is RolloutKind.RELOAD else status)
        for done in rollout.done:
            call(done, None, {"generation": self.pool.generation})

    def failed(self, worker: WorkerProcess, reason: str) -> bool:
        """A new-generation worker died before it was ready: roll back. True if handled."""
        rollout = self.current
        if rollout is None or worker.generation != self.pool.generation:
            return False
        if worker.was_ready:  # crashed after ready: respawned with backoff, no rollback
            return False
        self.current = None
        for other in self.pool.all():
            if other.generation == self.pool.generation:
                self.pool.stop(other, graceful=False, reason="rollback")
        self.pool.generation = rollout.old_generation
        self.metrics.count(f"rollouts|{rollout.kind.value}|rolled_back")
        if rollout.rollback is not None:
            rollout.rollback()
        log.error(
            "%s rolled back (generation %d keeps serving): %s",
            rollout.kind,
            self.pool.generation,
            reason,
        )
        if rollout.kind is RolloutKind.RELOAD:
            sd_notify("READY=1")
        for done in rollout.done:
            call(done, reason)
        return True

    def abandon(self, reason: str) -> None:
        """The master is stopping: answer the restart or reload in progress now, since no
        new generation will be waited for (its workers are being stopped with the rest)."""
        rollout, self.current = self.current, None
        if rollout is not None:
            log.info("%s abandoned: %s", rollout.kind, reason)
            self.metrics.count(f"rollouts|{rollout.kind.value}|abandoned")
            for done in rollout.done:
                call(done, reason)
        # a reload still validating: its callback sees the stop and does not exec
        finished, self.reloading = self.reloading, None
        if finished is not None:
            log.info("reload abandoned: %s", reason)
            call(finished, reason)

    def close_retired(self) -> None:
        """Close the listening sockets of ports the reloaded tap no longer has."""
        for sock in self.retired_sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.retired_sockets = []
