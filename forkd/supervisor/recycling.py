"""Worker recycling for applications that leak: gunicorn's --max-requests (with its
jitter), and --max-rss and --max-lifetime, which gunicorn users ask for and do by hand.

A worker past a limit is not stopped: it is marked `retiring`, which takes it out of the
count of the generation (so `Master.manage_workers` forks its replacement at once) while it
keeps serving. Only once every worker of the generation is ready again is the retiring one
told to drain (exit reason "recycle"). So capacity never dips below the target and nothing
is dropped; and one worker is recycled at a time, so a fleet of workers that all reach a
limit together (same start, same traffic) is replaced one by one, never at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from forkd.supervisor import logs
from forkd.supervisor.status import rss_of
from forkd.supervisor.supervision import WorkerProcess, WorkerState
from forkd.supervisor.workers import WorkerPool

log = logs.get("master")

RSS_EVERY = 5.0  # seconds between reads of the workers' memory (a /proc read each)
MIB = 1024 * 1024


@dataclass(frozen=True)
class RecycleLimits:
    """Zero turns a limit off."""

    max_requests: int = 0
    max_requests_jitter: int = 0  # each worker's limit is max_requests + randint(0, jitter)
    max_rss_mib: float = 0.0
    max_lifetime: float = 0.0  # seconds

    @property
    def any(self) -> bool:
        return bool(self.max_requests or self.max_rss_mib or self.max_lifetime)


class Recycler:
    """Decides, once per master loop iteration, which worker to recycle and when."""

    def __init__(
        self,
        pool: WorkerPool,
        limits: RecycleLimits,
        rss: Callable[[int], int | None] = rss_of,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.limits = limits
        self.rss = rss
        self.rng = rng or random.Random()
        self.request_limits: dict[int, int] = {}  # pid -> its own max requests
        self.next_rss_check = 0.0

    def check(self, now: float, target: int, busy: bool) -> None:
        """`busy`: a restart or reload is replacing workers anyway, or the master stops."""
        if not self.limits.any:
            return
        retiring = [w for w in self.pool.all() if w.retiring and w.state is WorkerState.READY]
        if retiring:
            current = self.pool.current()
            if len(current) >= target and all(w.state is WorkerState.READY for w in current):
                for worker in retiring:
                    log.info("worker %d (pid %d) replaced: recycled", worker.number, worker.pid)
                    self.pool.stop(worker, graceful=True, reason="recycle")
            return
        if busy:
            return
        for worker in self.pool.current():
            reason = self.due(worker, now) if worker.state is WorkerState.READY else None
            if reason is not None:
                log.info(
                    "recycling worker %d (pid %d): %s; its replacement boots first",
                    worker.number,
                    worker.pid,
                    reason,
                )
                worker.retiring = True
                return  # one at a time
        if now >= self.next_rss_check:
            self.next_rss_check = now + RSS_EVERY

    def due(self, worker: WorkerProcess, now: float) -> str | None:
        """Why `worker` must be recycled now, or None."""
        limits = self.limits
        if limits.max_requests:
            limit = self.request_limits.get(worker.pid)
            if limit is None:
                jitter = self.rng.randint(0, limits.max_requests_jitter)
                limit = self.request_limits[worker.pid] = limits.max_requests + jitter
            if worker.requests >= limit:
                return f"served {worker.requests} requests (--max-requests {limit})"
        if limits.max_lifetime and now - worker.started >= limits.max_lifetime:
            return f"up {now - worker.started:.0f}s (--max-lifetime {limits.max_lifetime:g})"
        if limits.max_rss_mib and now >= self.next_rss_check:
            rss = self.rss(worker.pid)
            if rss is not None and rss > limits.max_rss_mib * MIB:
                return f"resident memory {rss / MIB:.0f} MiB (--max-rss {limits.max_rss_mib:g})"
        return None

    def forget(self, worker: WorkerProcess) -> None:
        self.request_limits.pop(worker.pid, None)
