"""forkd.web.threadpool.ThreadPool: the accounting of threads, the waiting line and the
ports it holds back, on fakes (the jobs are run when the test says, the listener
records the modes it is asked for)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from forkd.listening import AcceptMode
from forkd.testing import wait_for
from forkd.web.threadpool import ThreadPool


class FakeListener:
    """A Listener as the pool sees it: the modes it was set to, the settles it got."""

    def __init__(self) -> None:
        self.modes: list[AcceptMode] = []
        self.settled = 0
        self.closed = False

    @property
    def mode(self) -> AcceptMode:
        return self.modes[-1] if self.modes else AcceptMode.FREE

    def setMode(self, holder: object, mode: AcceptMode) -> None:
        self.modes.append(mode)

    def settle(self) -> None:
        self.settled += 1


class Client:
    """One request: its job, whether its body is still coming, what its connection saw."""

    def __init__(self, name: str, log: list[str], coming: bool = True) -> None:
        self.name = name
        self.log = log
        self.coming = coming
        self.held = False

    def bodyComing(self) -> bool:
        return self.coming

    def job(self) -> None:
        self.log.append(f"ran {self.name}")

    def hold(self) -> None:
        self.held = True
        self.log.append(f"held {self.name}")

    def admit(self) -> None:
        self.held = False
        self.log.append(f"admitted {self.name}")


def names(submitted: list[Any]) -> list[str]:
    """Whose jobs went to the threads, in order."""
    owners = [job.__self__ for job in submitted]
    return [owner.name for owner in owners]


def pool_of(threads: int, waiting: int) -> tuple[ThreadPool, list[Any], list[str]]:
    """A pool whose jobs are kept in `submitted` instead of going to threads."""
    submitted: list[Any] = []
    return ThreadPool(threads, waiting, submit=submitted.append), submitted, []


def test_requests_run_at_once_while_a_thread_is_free() -> None:
    pool, submitted, log = pool_of(2, 2)
    listener = FakeListener()
    for name in "ab":
        client = Client(name, log)
        assert pool.run(client.job, client.hold, client.admit, client.bodyComing, listener) is None  # type: ignore[arg-type]
    assert names(submitted) == ["a", "b"]
    assert log == [] and pool.busy == 2 and listener.modes == []


def test_a_request_that_finds_every_thread_busy_waits_with_its_client_held() -> None:
    pool, submitted, log = pool_of(1, 2)
    first, second, third = (Client(n, log) for n in "abc")
    pool.run(first.job, first.hold, first.admit, first.bodyComing)
    assert pool.run(second.job, second.hold, second.admit, second.bodyComing) is not None
    pool.run(third.job, third.hold, third.admit, third.bodyComing)
    assert second.held and third.held and len(submitted) == 1
    pool.threadFree()  # a's thread is free: the oldest waiting request gets it
    assert log == ["held b", "held c", "admitted b"] and not second.held
    assert names(submitted) == ["a", "b"] and pool.busy == 1 and len(pool.line) == 1
    pool.threadFree()
    assert names(submitted) == ["a", "b", "c"] and not pool.line


def test_a_whole_request_is_queued_for_the_threads_not_held() -> None:
    """Its body is in: nothing to hold back, and a thread that finishes takes it with no
    round trip through the loop."""
    pool, submitted, log = pool_of(1, 1)
    first, whole = Client("a", log), Client("b", log, coming=False)
    pool.run(first.job, first.hold, first.admit, first.bodyComing)
    assert pool.run(whole.job, whole.hold, whole.admit, whole.bodyComing) is None
    assert not whole.held and names(submitted) == ["a", "b"]
    assert pool.busy == 2 and not pool.line and pool.load == 2


def test_the_order_of_arrival_is_kept_behind_a_held_upload() -> None:
    pool, submitted, log = pool_of(1, 5)
    first, upload, whole = Client("a", log), Client("b", log), Client("c", log, coming=False)
    pool.run(first.job, first.hold, first.admit, first.bodyComing)
    pool.run(upload.job, upload.hold, upload.admit, upload.bodyComing)
    pool.run(whole.job, whole.hold, whole.admit, whole.bodyComing)
    assert upload.held and len(submitted) == 1, "c waits behind b, not before it"
    pool.threadFree()
    assert names(submitted) == ["a", "b", "c"]
    assert log == ["held b", "admitted b", "admitted c"]
    assert not pool.line and pool.busy == 2


def test_a_full_line_holds_the_ports_and_a_free_thread_meters_them_back() -> None:
    """threads + maxWaiting running or waiting: stop accepting; below that again, accept
    one connection at a time (METER), and freely once idle."""
    pool, _, log = pool_of(2, 1)
    listener = FakeListener()
    for name in "abc":
        client = Client(name, log)
        pool.run(client.job, client.hold, client.admit, client.bodyComing, listener)  # type: ignore[arg-type]
    assert listener.modes == [AcceptMode.HOLD] and pool.load == 3
    pool.threadFree()  # c gets the thread: 2 running, none waiting
    assert listener.modes[-1] is AcceptMode.METER
    client = Client("d", log)
    pool.run(client.job, client.hold, client.admit, client.bodyComing, listener)  # type: ignore[arg-type]
    assert listener.modes[-1] is AcceptMode.HOLD and listener.settled == 0
    pool.threadFree()
    assert listener.modes[-1] is AcceptMode.METER
    pool.threadFree()
    client = Client("e", log)  # a metered connection's request: the port may take another
    pool.run(client.job, client.hold, client.admit, client.bodyComing, listener)  # type: ignore[arg-type]
    assert listener.settled == 1 and listener.modes[-1] is AcceptMode.METER
    pool.threadFree()
    pool.threadFree()
    assert pool.load == 0 and listener.modes[-1] is AcceptMode.FREE


def test_a_port_first_seen_while_held_is_held_at_once_and_a_closed_one_is_forgotten() -> None:
    pool, _, log = pool_of(1, 0)
    first, second = FakeListener(), FakeListener()
    client = Client("a", log)
    pool.run(client.job, client.hold, client.admit, client.bodyComing, first)  # type: ignore[arg-type]
    assert first.modes == [AcceptMode.HOLD]
    client = Client("b", log)
    pool.run(client.job, client.hold, client.admit, client.bodyComing, second)  # type: ignore[arg-type]
    assert second.modes == [AcceptMode.HOLD]
    second.closed = True  # the worker stopped serving that port
    pool.threadFree()
    pool.threadFree()
    assert first.modes[-1] is AcceptMode.FREE and second.modes == [AcceptMode.HOLD]
    assert second not in pool.listeners


def test_a_waiting_request_whose_client_left_never_runs() -> None:
    pool, submitted, log = pool_of(1, 1)
    listener = FakeListener()
    first, gone, last = (Client(n, log) for n in "abc")
    pool.run(first.job, first.hold, first.admit, first.bodyComing, listener)  # type: ignore[arg-type]
    waiting = pool.run(gone.job, gone.hold, gone.admit, gone.bodyComing, listener)  # type: ignore[arg-type]
    assert waiting is not None and listener.modes == [AcceptMode.HOLD]
    pool.cancel(waiting)
    assert listener.modes[-1] is AcceptMode.METER, "its place is free for a new connection"
    pool.cancel(waiting)  # twice is harmless
    pool.run(last.job, last.hold, last.admit, last.bodyComing, listener)  # type: ignore[arg-type]
    pool.threadFree()
    assert names(submitted) == ["a", "c"] and "admitted b" not in log


def test_real_threads_are_started_only_as_needed() -> None:
    pool = ThreadPool(4, 0, name="t")
    release = threading.Event()
    names: list[str] = []
    done = threading.Semaphore(0)

    def job() -> None:
        names.append(threading.current_thread().name)
        release.wait(10)
        done.release()

    for _ in range(2):
        pool.run(job, lambda: None, lambda: None, lambda: False)
    wait_for(lambda: len(names) == 2, 5, message="two jobs running")
    release.set()
    for _ in range(2):
        assert done.acquire(timeout=5)
        pool.threadFree()  # as the job's output would, in the loop
    pool.run(job, lambda: None, lambda: None, lambda: False)
    assert done.acquire(timeout=5)
    assert len(set(names)) == 2 and all(name.startswith("t-") for name in names)


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        ThreadPool(0, 1)
