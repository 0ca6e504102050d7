"""A real `Master` with nothing real under it, for unit tests of the supervisor's logic.

The loop is the real `forkd.supervisor.loop.Loop` with a fake clock (`master.clock.now`
is the time), the fork makes no process (each "worker" is a pid and a `RecordingChannel`),
and signals sent to workers are recorded in `master.killed` instead of delivered. Drive it
the way the loop would: `master.pool.on_message(worker, {...})`, `master.pool.exited(worker,
status)`, `master.iterate()` with a patched `poll`, and so on.
"""

from __future__ import annotations

from typing import Any

import pytest

from forkd.app import Application
from forkd.supervisor import daemon, rollout
from forkd.supervisor import master as master_module
from forkd.supervisor.channel import ChannelClosed, Op
from forkd.supervisor.loop import Loop
from forkd.supervisor.master import Master, MasterConfig
from forkd.supervisor.supervision import WorkerProcess


class FakeClock:
    """The master's time as a number a test sets (the loop reads it)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingChannel:
    """A worker channel that keeps what the master sends (and the descriptors, by number)."""

    fd = -1  # never polled: the real loop ignores negative descriptors

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], list[int]]] = []
        self.closed = False
        self.wants_write = False

    def fileno(self) -> int:
        return -1

    def send(self, message: dict[str, Any], fds: Any = ()) -> None:
        if self.closed:
            raise ChannelClosed("closed")
        self.sent.append((message, list(fds)))

    def receive(self) -> list[Any]:
        return []

    def flush_blocking(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def ops(self) -> list[str]:
        return [str(message["op"]) for message, _ in self.sent]


class FakeReadiness:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.fd = None

    def ready(self, summary: str = "") -> None:
        self.events.append("ready")

    def failed(self, reason: str) -> None:
        self.events.append(f"failed: {reason}")


def make_master(monkeypatch: pytest.MonkeyPatch, workers: int = 2, **config: Any) -> Any:
    """A Master of a portless application, `workers` workers, nothing forked or signalled."""
    app = Application("fake")
    app.tapfile = "/nonexistent/fake.tap"
    clock = FakeClock()
    master: Any = Master(
        app,
        MasterConfig(workers=workers, **config),
        readiness=FakeReadiness(),  # type: ignore[arg-type]
        loop=Loop(clock=clock),
    )
    master.clock = clock
    master.killed = []
    master.spawned = []
    monkeypatch.setattr(master.pool, "kill", lambda pid, sig: master.killed.append((pid, sig)))

    def fork(number: int) -> tuple[int, Any]:
        return 1000 + len(master.spawned), RecordingChannel()

    master.pool.fork = fork
    spawn = master.pool.spawn

    def spawn_and_record(**how: Any) -> WorkerProcess:
        worker = spawn(**how)
        master.spawned.append(worker)
        return worker

    monkeypatch.setattr(master.pool, "spawn", spawn_and_record)
    for module in (master_module, rollout, daemon):
        monkeypatch.setattr(module, "sd_notify", lambda state: False)
    return master


def ready(master: Any, workers: list[WorkerProcess]) -> None:
    for worker in workers:
        master.pool.on_message(worker, {"op": Op.READY})


def start(master: Any) -> list[WorkerProcess]:
    """Spawn the first generation and make it ready: the master is RUNNING after this."""
    master.manage_workers()
    workers = list(master.spawned)
    ready(master, workers)
    master.manage_workers()
    return workers


class Answers:
    """A `done(error, result)` that remembers every answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, Any]] = []

    def __call__(self, error: str | None, result: Any = None) -> None:
        self.calls.append((error, result))
