"""The re-exec snapshot round trip: what one master image writes, the next one adopts.

No exec here: the state goes through JSON as it does through the state file, with every
descriptor duplicated (the exec keeps the numbers, but here the old image's objects still
own them), and `resume` builds the new master from it."""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from forkd import tapfile
from forkd.ports import TCPPort
from forkd.protocol import Factory
from forkd.supervisor import resume
from forkd.supervisor.channel import Channel, Op
from forkd.supervisor.logs import LogSetup
from forkd.supervisor.rollout import RolloutKind
from forkd.supervisor.supervision import MasterState, WorkerState
from forkd.testing import free_port
from tests.supervising import make_master, start


@pytest.fixture
def log_setup() -> Iterator[LogSetup]:
    """The new image's logging, taken back afterwards: LogSetup configures the process's
    "forkd" logger (no propagation), which would hide later tests' records from caplog."""
    logger = logging.getLogger("forkd")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        yield LogSetup(None)
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.propagate, logger.level = saved[1], saved[2]


def through_exec(state: dict[str, Any]) -> dict[str, Any]:
    """The state as the new image reads it, its descriptors its own."""
    state = json.loads(json.dumps(state))
    state["ports"] = {key: os.dup(fd) for key, fd in state["ports"].items()}
    for entry in state["workers"]:
        entry["fd"] = os.dup(entry["fd"])
    return state


def test_workers_ports_and_generation_survive_the_round_trip(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, log_setup: LogSetup
) -> None:
    master = make_master(monkeypatch, workers=2, save_on_stop=False)
    application = master.application
    application.tapfile = master.tapfile = str(tmp_path / "app.tap")
    port = TCPPort(free_port(), Factory(), interface="127.0.0.1")
    application.ports.append(port)
    tapfile.save(application, application.tapfile)
    worker_ends: list[Channel] = []

    def fork(number: int) -> tuple[int, Channel]:
        master_end, worker_end = Channel.pair()
        worker_ends.append(worker_end)
        return 4000 + number, master_end

    master.pool.fork = fork
    master.bind_ports()
    old = start(master)
    master.pool.stop(old[1], graceful=True)  # one is draining, with a SIGKILL deadline
    master.clock.now = 10.0
    state, fds = master.snapshot()
    assert set(fds) >= {port.fileno(), *(w.channel.fileno() for w in old)}
    new = resume.resume(through_exec(state), log_setup)
    try:
        assert new.state is MasterState.RUNNING and new.target == 2
        assert new.rollouts.current is not None
        assert new.rollouts.current.kind is RolloutKind.RELOAD
        assert new.generation == 2 and new.rollouts.current.old_generation == 1
        adopted = {w.pid: w for w in new.pool.all()}
        assert sorted(adopted) == sorted(w.pid for w in old)
        assert adopted[old[0].pid].state is WorkerState.READY and adopted[old[0].pid].was_ready
        draining = adopted[old[1].pid]
        assert draining.state is WorkerState.STOPPING and draining.kill_at is not None
        [new_port] = new.application.ports
        assert new_port.socket is not None
        assert new_port.socket.getsockname() == port.socket.getsockname(), "the same socket"
        # the adopted channel is the same socketpair: the old worker end still talks to it
        worker_ends[0].send({"op": Op.HEARTBEAT, "connections": 7})
        worker_ends[0].flush()
        new.pool.on_channel(adopted[old[0].pid])
        assert adopted[old[0].pid].connections == 7
    finally:
        for worker in new.pool.all():
            worker.channel.close()
        for each in new.application.ports:
            each.stopListening()
        new.loop.close()
        for end in worker_ends:
            end.close()
        port.stopListening()
        master.loop.close()


def test_a_tap_that_no_longer_loads_keeps_the_old_application(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, log_setup: LogSetup
) -> None:
    master = make_master(monkeypatch, workers=0, save_on_stop=False)
    master.application.tapfile = master.tapfile = str(tmp_path / "app.tap")
    (tmp_path / "app.tap").write_bytes(b"not a tap")
    finished: list[Any] = []

    def answer(what: str) -> Any:
        return lambda error, result=None: finished.append((what, error))

    monkeypatch.setattr(type(master), "log_result", staticmethod(answer))
    state, _ = master.snapshot()
    new = resume.resume(through_exec(state), log_setup)
    try:
        assert new.application.name == "fake" and new.rollouts.current is None
        [(what, error)] = finished
        assert what == "reload" and "not a forkd tap file" in error
    finally:
        new.loop.close()
        master.loop.close()
