"""The master's supervision bookkeeping as pure logic: worker records, crash backoff,
heartbeat deadlines, kill escalation and suspend detection.

Nothing here forks, signals or reads a clock: every function takes `now`, so the master's
decisions are unit-tested with plain numbers (tests/supervisor/test_master_supervision.py).
"""

from __future__ import annotations

import enum
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
STABLE_AFTER = 10.0  # a worker up this long proves the crash loop is over
KILL_GRACE = 5.0  # SIGABRT (traceback) -> SIGKILL
SUSPEND_SLACK = 3.0  # a loop iteration this much later than it could be = we were stopped


class MasterState(enum.Enum):
    STARTING = "starting"  # waiting for the first workers to be ready
    RUNNING = "running"
    STOPPING = "stopping"


class WorkerState(enum.Enum):
    BOOTING = "booting"  # forked, factories starting
    READY = "ready"  # serving every port
    STOPPING = "stopping"  # asked to stop (graceful or not)
    TIMED_OUT = "timed-out"  # SIGABRT sent for a missed heartbeat


@dataclass
class WorkerProcess:
    """What the master knows of one worker process."""

    pid: int
    number: int
    generation: int
    channel: Any
    started: float  # the master's clock at spawn
    started_wall: float = field(default_factory=time.time)
    state: WorkerState = WorkerState.BOOTING
    last_beat: float = 0.0
    connections: int = 0
    accepted: int = 0
    requests: int = 0
    boot_error: str | None = None
    kill_at: float | None = None  # SIGKILL deadline once stopping or timed out
    exit_signal: int | None = None  # the signal that ended it, once reaped
    was_ready: bool = False  # said "ready" once: its later failures are not boot failures
    metrics: dict[str, float] = field(default_factory=dict)  # its counts, at its last beat
    exit_reason: str = "stopped"  # how it ended (forkd.supervisor.metrics.EXIT_REASONS)
    retiring: bool = False  # past a recycling limit: serves on until its replacement is up

    def __post_init__(self) -> None:
        if not self.last_beat:
            self.last_beat = self.started

    def beat(self, now: float, counters: dict[str, Any]) -> None:
        self.last_beat = now
        for name in ("connections", "accepted", "requests"):
            value = counters.get(name)
            if isinstance(value, int):
                setattr(self, name, value)
        reported = counters.get("metrics")
        if isinstance(reported, dict):
            self.metrics = {
                str(k): float(v) for k, v in reported.items() if isinstance(v, (int, float))
            }

    @property
    def alive_for_service(self) -> bool:
        """Counts toward the target worker count (not on its way out)."""
        return self.state in (WorkerState.BOOTING, WorkerState.READY) and not self.retiring


class Backoff:
    """Exponential delay between respawns of crashing workers, capped at BACKOFF_CAP."""

    def __init__(self, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self.not_before = 0.0

    def failed(self, now: float) -> float:
        """Record a crash; return the delay before the next spawn."""
        self.failures += 1
        delay = min(self.cap, self.base * 2.0 ** (self.failures - 1))
        self.not_before = now + delay
        return delay

    def reset(self) -> None:
        self.failures = 0
        self.not_before = 0.0

    def may_spawn(self, now: float) -> bool:
        return now >= self.not_before

    def remaining(self, now: float) -> float:
        return max(0.0, self.not_before - now)

    def status(self, now: float) -> dict[str, Any]:
        return {"failures": self.failures, "next_spawn_in": round(self.remaining(now), 3)}


class SlotBackoff:
    """One Backoff per worker slot (its number): a slot whose workers keep failing at boot,
    or right after it, waits longer each time, while the other slots are replaced at once.
    Why per slot: one global delay, armed by kills of healthy workers, left no worker at
    all for seconds while the listening socket stayed open and clients hung in its backlog.
    """

    def __init__(self, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> None:
        self.base = base
        self.cap = cap
        self.slots: dict[int, Backoff] = {}

    def failed(self, number: int, now: float) -> float:
        """Slot `number`'s worker failed early: the delay before it is respawned."""
        return self.slots.setdefault(number, Backoff(self.base, self.cap)).failed(now)

    def clear(self, number: int) -> None:
        """The slot is healthy again (its worker stayed up), or its failure was not early."""
        self.slots.pop(number, None)

    def waiting(self, now: float) -> set[int]:
        """The slots that may not be respawned yet."""
        return {number for number, slot in self.slots.items() if not slot.may_spawn(now)}

    @property
    def failures(self) -> int:
        """The longest run of early failures of any slot."""
        return max((slot.failures for slot in self.slots.values()), default=0)

    def status(self, now: float) -> dict[str, Any]:
        waiting = [slot.remaining(now) for slot in self.slots.values() if not slot.may_spawn(now)]
        return {
            "failures": self.failures,
            "next_spawn_in": round(min(waiting), 3) if waiting else 0.0,
            "slots": {str(n): slot.status(now) for n, slot in sorted(self.slots.items())},
        }


# what an operator, a supervisor or the OOM killer ends a process with: not its own fault
KILLED_FROM_OUTSIDE = frozenset(
    {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP}
)


def failed_early(worker: WorkerProcess, now: float) -> bool:
    """A failure that says the code is broken, not that the worker was killed: it never got
    ready, or it crashed (an exit code, SIGSEGV, SIGABRT...) within STABLE_AFTER of
    starting. Only these are backed off; a serving worker killed from outside is replaced
    at once, however young."""
    if not worker.was_ready:
        return True
    if worker.exit_signal in KILLED_FROM_OUTSIDE:
        return False
    return now - worker.started < STABLE_AFTER


def overdue(workers: list[WorkerProcess], now: float, timeout: float) -> list[WorkerProcess]:
    """Workers that should be serving but have not sent a heartbeat for `timeout` seconds."""
    return [
        worker
        for worker in workers
        if worker.alive_for_service and now - worker.last_beat > timeout
    ]


def kills_due(workers: list[WorkerProcess], now: float) -> list[WorkerProcess]:
    """Workers past their SIGKILL deadline (stopping too long, or SIGABRT ignored)."""
    return [w for w in workers if w.kill_at is not None and now >= w.kill_at]


class SuspendDetector:
    """Notices that the master itself did not run for a while (SIGSTOP, laptop sleep).

    Each loop iteration reports when it woke and the longest it asked to sleep; a wake-up
    much later than that means the process was not scheduled, and heartbeat deadlines that
    passed meanwhile say nothing about the workers."""

    def __init__(self, slack: float = SUSPEND_SLACK) -> None:
        self.slack = slack
        self.expected: float | None = None

    def will_sleep(self, now: float, timeout: float) -> None:
        self.expected = now + timeout

    def woke(self, now: float) -> float:
        """Return how long we were suspended (0.0 when not)."""
        expected, self.expected = self.expected, None
        if expected is None:
            return 0.0
        late = now - expected
        return late if late > self.slack else 0.0


def excuse(workers: list[WorkerProcess], now: float) -> None:
    """After a suspend, give every worker a fresh heartbeat deadline."""
    for worker in workers:
        worker.last_beat = max(worker.last_beat, now)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_status(status: int) -> tuple[str, int | None, int | None]:
    """Decode a waitpid status: (text, exit code or None, signal number or None)."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal_name(number)
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"killed by {name}{core}", None, number
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return f"exited with code {code}", code, None
    return f"status {status}", None, None
