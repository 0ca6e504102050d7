"""Restart generations and their rollback, on the real Master with nothing forked."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from forkd.supervisor.master import MasterState
from forkd.supervisor.rollout import RolloutKind
from forkd.supervisor.supervision import WorkerState
from forkd.supervisor.worker import EXIT_BOOT_FAILED
from tests.supervising import Answers, make_master, ready, start


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Any:
    m = make_master(monkeypatch, workers=2)
    yield m
    m.loop.close()


def test_a_restart_drains_the_old_generation_only_once_the_new_one_is_ready(master: Any) -> None:
    old = start(master)
    assert master.state is MasterState.RUNNING
    answers = Answers()
    master.restart(answers)
    assert master.generation == 2 and master.rollouts.current.kind is RolloutKind.RESTART
    master.manage_workers()
    new = [w for w in master.spawned if w.generation == 2]
    assert len(new) == 2
    ready(master, new[:1])
    master.rollouts.check(master.target)
    assert master.killed == [] and answers.calls == [], "half the new generation is not enough"
    ready(master, new[1:])
    master.rollouts.check(master.target)
    assert sorted(master.killed) == sorted((w.pid, signal.SIGTERM) for w in old)
    assert all(w.state is WorkerState.STOPPING for w in old)
    assert answers.calls == [(None, {"generation": 2})]
    assert master.rollouts.current is None


def test_a_second_restart_joins_the_one_in_progress(master: Any) -> None:
    start(master)
    first, second = Answers(), Answers()
    master.restart(first)
    master.restart(second)
    assert master.generation == 2
    master.manage_workers()
    ready(master, [w for w in master.spawned if w.generation == 2])
    master.rollouts.check(master.target)
    assert first.calls == second.calls == [(None, {"generation": 2})]


def test_a_new_worker_failing_before_ready_rolls_back(master: Any) -> None:
    old = start(master)
    answers = Answers()
    master.restart(answers)
    master.manage_workers()
    broken, other = [w for w in master.spawned if w.generation == 2]
    master.pool.on_message(broken, {"op": "boot_failed", "error": "ImportError: no module"})
    master.pool.exited(master.workers.pop(broken.pid), EXIT_BOOT_FAILED << 8)
    assert master.generation == 1, "the old generation is current again"
    assert (other.pid, signal.SIGQUIT) in master.killed
    assert not any(pid == w.pid for w in old for pid, _ in master.killed), "old ones keep serving"
    assert answers.calls == [("worker failed to boot: ImportError: no module", None)]
    assert master.rollouts.current is None and master.state is MasterState.RUNNING
    assert master.backoff.failures == 0, "a rollback is not a crash loop"


def test_a_rollback_runs_the_rollouts_own_rollback(master: Any) -> None:
    start(master)
    undone: list[str] = []
    master.rollouts.begin(RolloutKind.RELOAD, Answers(), lambda: undone.append("restored"))
    master.manage_workers()
    crashed = next(w for w in master.spawned if w.generation == 2)
    master.pool.exited(master.workers.pop(crashed.pid), signal.SIGSEGV)
    assert undone == ["restored"] and master.generation == 1


def test_a_new_worker_crashing_after_ready_is_respawned_not_rolled_back(master: Any) -> None:
    start(master)
    answers = Answers()
    master.restart(answers)
    master.manage_workers()
    first, _second = [w for w in master.spawned if w.generation == 2]
    ready(master, [first])
    master.pool.exited(master.workers.pop(first.pid), signal.SIGSEGV)
    assert master.generation == 2 and master.rollouts.current is not None
    assert master.backoff.failures == 1 and answers.calls == []


def test_stopping_abandons_the_rollout_and_answers_it(master: Any) -> None:
    start(master)
    answers = Answers()
    master.restart(answers)
    master.stop(graceful=True)
    assert answers.calls == [("the master is stopping", None)]
    later = Answers()
    master.restart(later)
    assert later.calls == [("the master is stopping", None)]


def test_reload_is_refused_while_a_restart_runs_and_with_unsaved_changes(master: Any) -> None:
    start(master)
    master.restart(None)
    refused = Answers()
    master.reload(False, refused)
    assert refused.calls == [("a restart or reload is already in progress", None)]
    master.rollouts.current = None
    master.unsaved = True
    unsaved = Answers()
    master.reload(False, unsaved)
    assert "unsaved changes" in str(unsaved.calls[0][0])


def test_a_refused_reload_is_logged_by_the_master(
    master: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The "unsaved edits" refusal reached only the forkctl that asked (issue 9, item 17)."""
    start(master)
    master.unsaved = True
    master.reload(False, Answers())
    assert "reload refused: the running application has unsaved changes" in caplog.text
