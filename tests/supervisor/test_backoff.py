"""Respawn backoff is per worker slot and only for early failures (issue 9, item 3)."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from forkd.supervisor.supervision import STABLE_AFTER
from tests.supervising import make_master, ready, start


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Any:
    m = make_master(monkeypatch, workers=2)
    yield m
    m.loop.close()


def kill(master: Any, worker: Any, status: int = signal.SIGKILL) -> None:
    master.pool.exited(master.workers.pop(worker.pid), status)


def test_a_serving_worker_that_is_killed_is_replaced_at_once(master: Any) -> None:
    """Six SIGKILLs of workers that had been serving used to leave no worker for 16 s."""
    start(master)
    for _ in range(6):
        master.clock.now += STABLE_AFTER + 1
        victim = master.pool.current()[0]
        kill(master, victim)
        master.manage_workers()
        assert len(master.pool.current()) == 2, "replaced in the same loop iteration"
        ready(master, master.pool.current())
    assert master.backoff.failures == 0


def test_one_slot_crash_looping_does_not_delay_the_others(master: Any) -> None:
    first, second = start(master)
    master.clock.now = 100.0
    kill(master, first)  # it had served: replaced at once...
    master.manage_workers()
    for _ in range(3):  # ...by workers that crash right after boot, again and again
        worker = next(w for w in master.pool.current() if w.number == first.number)
        kill(master, worker, signal.SIGSEGV)
        master.manage_workers()
        assert first.number in master.backoff.waiting(master.clock.now)
        master.clock.now += master.backoff.slots[first.number].remaining(master.clock.now)
        master.manage_workers()
    assert master.backoff.slots[first.number].failures == 3
    kill(master, next(w for w in master.pool.current() if w.number == first.number), 11)
    # slot 2's worker is killed after serving: replaced at once while slot 1 waits
    kill(master, second)
    master.manage_workers()
    assert [w.number for w in master.pool.current()] == [second.number]
    assert master.backoff.waiting(master.clock.now) == {first.number}


def test_a_slot_backing_off_is_not_taken_by_another_spawn(master: Any) -> None:
    first, _second = start(master)
    master.clock.now = 1.0
    kill(master, first, signal.SIGSEGV)  # right after boot
    master.manage_workers()
    assert [w.number for w in master.pool.current()] == [2], "slot 1 waits its delay"
    master.clock.now += master.backoff.base
    master.manage_workers()
    assert sorted(w.number for w in master.pool.current()) == [1, 2]


def test_a_slot_stable_again_forgets_its_failures(master: Any) -> None:
    first, _second = start(master)
    kill(master, first, signal.SIGSEGV)
    master.clock.now += master.backoff.base
    master.manage_workers()
    ready(master, master.pool.current())
    assert master.status()["backoff"]["failures"] == 1
    master.clock.now += STABLE_AFTER
    master.manage_workers()
    assert master.status()["backoff"] == {"failures": 0, "next_spawn_in": 0.0, "slots": {}}


def test_a_young_serving_worker_killed_from_outside_is_replaced_at_once(master: Any) -> None:
    """Killed by an operator or the OOM killer two seconds after boot: not a crash loop
    (six such rounds used to leave no worker for 113 s, scripts/fault_scenarios.py)."""
    for _ in range(6):
        workers = start(master) if not master.pool.current() else master.pool.current()
        master.clock.now += 2.0
        for worker in workers:
            kill(master, worker, signal.SIGKILL)
        master.manage_workers()
        assert len(master.pool.current()) == 2
        ready(master, master.pool.current())
    assert master.backoff.failures == 0


def test_a_young_worker_that_crashes_by_itself_is_backed_off(master: Any) -> None:
    first, _second = start(master)
    master.clock.now += 2.0
    kill(master, first, signal.SIGSEGV)
    master.manage_workers()
    assert [w.number for w in master.pool.current()] == [2]
    assert master.backoff.failures == 1
