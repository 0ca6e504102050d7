"""Signals reach the master's handlers through the loop's queue, never in the handler."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from forkd.supervisor.master import HANDLED_SIGNALS, MasterState
from forkd.testing import wait_for
from tests.supervising import make_master, start


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Any:
    m = make_master(monkeypatch, workers=2)
    yield m
    m.loop.close()


def queue(master: Any, *signums: int) -> None:
    master.loop.signals.extend(signums)
    master.dispatch_signals()


def test_every_handled_signal_has_a_handler(master: Any) -> None:
    for name in HANDLED_SIGNALS:
        assert callable(getattr(master, f"handle_{name.lower()}"))


def test_a_real_signal_is_only_queued_until_the_loop_dispatches_it(master: Any) -> None:
    start(master)
    previous = signal.getsignal(signal.SIGTTIN)
    master.loop.watch_signals([signal.SIGTTIN])
    try:
        os.kill(os.getpid(), signal.SIGTTIN)
        wait_for(lambda: list(master.loop.signals) == [signal.SIGTTIN], 5)
        assert master.target == 2, "the handler itself changes nothing"
        master.dispatch_signals()
        assert master.target == 3 and not master.loop.signals
    finally:
        signal.signal(signal.SIGTTIN, previous)
        signal.set_wakeup_fd(-1)


def test_ttin_ttou_winch_change_the_target(master: Any) -> None:
    start(master)
    queue(master, signal.SIGTTIN, signal.SIGTTIN)
    assert master.target == 4
    queue(master, signal.SIGTTOU)
    assert master.target == 3
    queue(master, signal.SIGWINCH)
    assert master.target == 0 and master.state is MasterState.RUNNING


def test_usr1_reopens_the_workers_logs(master: Any) -> None:
    workers = start(master)
    queue(master, signal.SIGUSR1)
    assert sorted(master.killed) == sorted((w.pid, signal.SIGUSR1) for w in workers)


def test_term_drains_and_a_second_quit_cuts_it_short(master: Any) -> None:
    workers = start(master)
    queue(master, signal.SIGTERM)
    assert master.state is MasterState.STOPPING
    assert sorted(master.killed) == sorted((w.pid, signal.SIGTERM) for w in workers)
    master.killed.clear()
    queue(master, signal.SIGQUIT)
    assert sorted(master.killed) == sorted((w.pid, signal.SIGQUIT) for w in workers)


def test_hup_starts_a_reload(master: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    start(master)
    asked: list[str] = []
    monkeypatch.setattr(
        master.rollouts, "reload", lambda tapfile, done, **how: asked.append(tapfile)
    )
    queue(master, signal.SIGHUP)
    assert asked == [master.tapfile]
