"""The master's supervision logic on fakes: backoff, boot-failure halt, heartbeat timeout,
suspend detection. No process is forked: fork/kill are patched, time is a number."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from forkd.supervisor.master import MasterState
from forkd.supervisor.supervision import (
    BACKOFF_CAP,
    KILL_GRACE,
    Backoff,
    SuspendDetector,
    WorkerProcess,
    WorkerState,
    describe_status,
    excuse,
    overdue,
)
from forkd.supervisor.worker import EXIT_BOOT_FAILED
from tests.supervising import RecordingChannel, make_master


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Any:
    m = make_master(monkeypatch, workers=2, timeout=30.0)
    yield m
    m.loop.close()


def test_backoff_doubles_and_caps() -> None:
    backoff = Backoff(base=0.5, cap=BACKOFF_CAP)
    delays = [backoff.failed(100.0) for _ in range(10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == BACKOFF_CAP and max(delays) == BACKOFF_CAP
    assert not backoff.may_spawn(100.0 + BACKOFF_CAP - 1)
    assert backoff.may_spawn(100.0 + BACKOFF_CAP)
    assert backoff.status(110.0) == {"failures": 10, "next_spawn_in": BACKOFF_CAP - 10}
    backoff.reset()
    assert backoff.failures == 0 and backoff.may_spawn(0.0)


def test_ready_workers_make_the_start_succeed(master: Any) -> None:
    master.manage_workers()
    assert len(master.spawned) == 2 and master.state is MasterState.STARTING
    for worker in master.spawned:
        master.pool.on_message(worker, {"op": "ready"})
    master.manage_workers()
    assert master.state is MasterState.RUNNING
    assert master.readiness.events == ["ready"]


def test_boot_failure_halts_the_start_instead_of_respawning(master: Any) -> None:
    master.manage_workers()
    first = master.spawned[0]
    master.pool.on_message(first, {"op": "boot_failed", "error": "ValueError: no database"})
    master.workers.pop(first.pid)
    master.pool.exited(first, EXIT_BOOT_FAILED << 8)
    assert master.readiness.events == ["failed: worker failed to boot: ValueError: no database"]
    assert master.state is MasterState.STOPPING and master.exit_code == 1
    # the other worker is told to stop, and nothing new is spawned
    assert (master.spawned[1].pid, signal.SIGQUIT) in master.killed
    master.manage_workers()
    assert len(master.spawned) == 2


def test_crash_after_boot_respawns_with_backoff(master: Any, monkeypatch: Any) -> None:
    master.clock.now = 50.0
    master.manage_workers()
    for worker in master.spawned:
        master.pool.on_message(worker, {"op": "ready"})
    master.manage_workers()
    crashed = master.spawned[0]
    master.workers.pop(crashed.pid)
    master.pool.exited(crashed, signal.SIGSEGV)  # killed by a signal
    assert master.backoff.failures == 1
    master.manage_workers()
    assert len(master.spawned) == 2, "respawned before the backoff delay"
    master.clock.now += master.backoff.base
    master.manage_workers()
    assert len(master.spawned) == 3 and master.state is MasterState.RUNNING


def test_heartbeat_timeout_aborts_then_kills(master: Any, monkeypatch: Any) -> None:
    master.manage_workers()
    quiet, chatty = master.spawned
    for worker in master.spawned:
        master.pool.on_message(worker, {"op": "ready"})
    chatty.beat(29.0, {"connections": 3})
    master.pool.check(31.0)
    assert master.killed == [(quiet.pid, signal.SIGABRT)]
    assert quiet.state is WorkerState.TIMED_OUT and chatty.connections == 3
    master.pool.check(31.0 + KILL_GRACE - 0.1)
    assert len(master.killed) == 1
    master.pool.check(31.0 + KILL_GRACE)
    assert master.killed[-1] == (quiet.pid, signal.SIGKILL)


def test_suspend_detection_excuses_missed_heartbeats() -> None:
    detector = SuspendDetector(slack=3.0)
    detector.will_sleep(10.0, 1.0)
    assert detector.woke(11.2) == 0.0  # on time
    detector.will_sleep(11.2, 1.0)
    gap = detector.woke(72.2)  # SIGSTOPped for a minute
    assert gap == pytest.approx(60.0)
    worker = WorkerProcess(
        7, 1, 1, RecordingChannel(), 0.0, state=WorkerState.READY, last_beat=11.0
    )
    assert overdue([worker], 72.2, 30.0) == [worker]
    excuse([worker], 72.2)
    assert overdue([worker], 72.2, 30.0) == []


def test_suspended_master_does_not_kill(master: Any, monkeypatch: Any) -> None:
    master.clock.now = 100.0  # will_sleep at 100, wakes at 200: a 99 s gap

    def suspended(timeout: float) -> None:
        master.clock.now = 200.0

    monkeypatch.setattr(master.loop, "poll", suspended)
    master.state = MasterState.RUNNING
    worker = WorkerProcess(
        9, 1, 1, RecordingChannel(), 0.0, state=WorkerState.READY, last_beat=99.0
    )
    master.workers[9] = worker
    master.target = 1
    master.iterate()
    assert master.killed == []


def test_describe_status_names_signals() -> None:
    assert describe_status(signal.SIGKILL)[0] == "killed by SIGKILL"
    assert describe_status(3 << 8) == ("exited with code 3", 3, None)


def test_scale_specs(master: Any) -> None:
    assert master.scale("5") == 5
    assert master.scale("+2") == 7
    assert master.scale("-10") == 0
    with pytest.raises(ValueError):
        master.scale("many")


def test_reaping_a_worker_never_deafens_the_socket_that_reused_its_channel_number(
    master: Any,
) -> None:
    """Its channel closed at EOF, a forkctl client was accepted on the same descriptor
    number, then SIGCHLD: forgetting the old number must not unregister the new client."""
    import socket as socket_module

    left, right = socket_module.socketpair()
    try:
        worker = WorkerProcess(2000, 7, master.generation, RecordingChannel(), 0.0)
        worker.channel.closed = True
        worker.channel.fd = left.fileno()  # the number the closed channel had
        master.workers[worker.pid] = worker
        heard: list[bytes] = []
        master.loop.add_reader(left.fileno(), lambda: heard.append(left.recv(16)))
        master.pool.exited(master.workers.pop(worker.pid), 0)
        right.sendall(b"ping")
        master.loop.poll(1.0)
        assert heard == [b"ping"]
    finally:
        left.close()
        right.close()
