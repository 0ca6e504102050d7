"""A worker's drain on a fake clock: it waits the graceful timeout for open connections,
then aborts what is left, and stops every factory; no real time passes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from forkd.protocol import Factory, Protocol, stats
from forkd.supervisor.worker import Worker, WorkerSettings
from forkd.testing import StringTransport


class Lingering(Protocol):
    """A connection that hears it should finish, and finishes after `polls` drain checks."""

    def __init__(self, polls: int | None) -> None:
        self.polls = polls
        self.told = 0

    def connectionDraining(self) -> None:
        self.told += 1


class FakeTime:
    """The asyncio loop's clock: every reading moves it on by `step` seconds, so every
    sleep of the drain ends at once and its deadline is reached in a known number of polls."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self.readings = 0

    def __call__(self) -> float:
        self.now += self.step
        self.readings += 1
        return self.now


class FakePort:
    """A served port with no socket: the drain only needs its factory."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    def fileno(self) -> int:
        return -1


@pytest.fixture
def clean_stats() -> Iterator[None]:
    yield
    stats.open.clear()
    stats.draining = False


def drain(worker: Worker, time: FakeTime) -> None:
    loop = asyncio.new_event_loop()  # the stdlib loop, whose time() can be replaced
    loop.time = time  # type: ignore[method-assign]

    async def watch() -> None:  # a connection that closes itself after some polls
        while stats.open:
            for protocol in list(stats.open):
                assert isinstance(protocol, Lingering)
                if protocol.polls is not None:
                    protocol.polls -= 1
                    if protocol.polls <= 0:
                        stats.open.discard(protocol)
            await asyncio.sleep(0)

    async def both() -> None:
        watcher = asyncio.ensure_future(watch())
        await worker.drain(graceful=True)
        watcher.cancel()

    try:
        loop.run_until_complete(both())
    finally:
        loop.close()


def worker_with(protocols: list[Lingering], graceful_timeout: float) -> Worker:
    settings = WorkerSettings(number=1, title="t", graceful_timeout=graceful_timeout)
    worker = Worker(None, None, settings, None)  # type: ignore[arg-type]
    factory = Factory()
    stopped: list[str] = []
    factory.doStop = lambda: stopped.append("stopped")  # type: ignore[method-assign]
    worker.servers["tcp:x"] = (FakePort(factory), None)
    worker.stopped = stopped  # type: ignore[attr-defined]
    for protocol in protocols:
        protocol.makeConnection(StringTransport())
        stats.open.add(protocol)
    return worker


def test_a_connection_that_never_ends_is_aborted_at_the_graceful_timeout(
    clean_stats: None,
) -> None:
    stuck = Lingering(polls=None)
    worker = worker_with([stuck], graceful_timeout=30.0)
    time = FakeTime(step=0.5)
    drain(worker, time)
    assert stuck.told == 1, "told once to finish"
    assert stuck.transport.aborted, "aborted after the timeout"
    assert time.now >= 30.0, "not before the graceful timeout"
    assert worker.stopped == ["stopped"] and worker.servers == {}  # type: ignore[attr-defined]


def test_connections_that_finish_in_time_are_not_aborted(clean_stats: None) -> None:
    quick = Lingering(polls=3)
    worker = worker_with([quick], graceful_timeout=30.0)
    time = FakeTime(step=0.5)
    drain(worker, time)
    assert quick.told == 1 and not quick.transport.aborted
    assert time.now < 30.0, "the drain ended when the last connection did"
    assert worker.stopped == ["stopped"]  # type: ignore[attr-defined]
