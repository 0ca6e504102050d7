"""Live port changes and their acknowledgements, on the real Master with nothing forked."""

from __future__ import annotations

import base64
import pickle
from typing import Any

import pytest

from forkd.ports import PortError, TCPPort
from forkd.protocol import Factory
from forkd.supervisor.channel import Op
from tests.supervising import Answers, make_master, start


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Any:
    m = make_master(monkeypatch, workers=2)
    yield m
    for port in list(m.application.ports):
        port.stopListening()
    m.loop.close()


def new_port() -> TCPPort:
    return TCPPort(0, Factory(), interface="127.0.0.1")


def test_an_added_port_reaches_every_worker_and_finishes_when_all_answered(master: Any) -> None:
    workers = start(master)
    port, answers = new_port(), Answers()
    master.add_port(port, answers)
    assert port.socket is not None, "bound by the master first"
    for worker in workers:
        message, fds = worker.channel.sent[-1]
        assert message["op"] == Op.ADD_PORT and message["key"] == port.key
        assert fds == [port.fileno()]
        assert pickle.loads(base64.b64decode(message["port"])).key == port.key
    master.pool.on_message(workers[0], {"op": Op.PORT_ADDED, "key": port.key})
    assert answers.calls == []
    master.pool.on_message(workers[1], {"op": Op.PORT_ADDED, "key": port.key})
    assert answers.calls == [(None, {"key": port.key})]
    assert master.port_changes.pending == []


def test_failures_are_joined_and_an_exited_worker_counts_as_answered(master: Any) -> None:
    workers = start(master)
    port, answers = new_port(), Answers()
    master.add_port(port, answers)
    master.pool.on_message(workers[0], {"op": Op.PORT_FAILED, "key": port.key, "error": "EMFILE"})
    master.pool.exited(master.workers.pop(workers[1].pid), 9)  # SIGKILLed meanwhile
    assert answers.calls == [("worker 1: EMFILE", {"key": port.key})]


def test_an_acknowledgement_for_another_key_or_kind_changes_nothing(master: Any) -> None:
    workers = start(master)
    port, answers = new_port(), Answers()
    master.add_port(port, answers)
    for worker in workers:
        master.pool.on_message(worker, {"op": Op.PORT_REMOVED, "key": port.key})
        master.pool.on_message(worker, {"op": Op.PORT_ADDED, "key": "tcp:127.0.0.1:1"})
    assert answers.calls == [] and len(master.port_changes.pending) == 1


def test_a_removed_port_closes_only_after_every_worker_stopped_serving_it(master: Any) -> None:
    workers = start(master)
    port = new_port()
    master.add_port(port, None)
    for worker in workers:
        master.pool.on_message(worker, {"op": Op.PORT_ADDED, "key": port.key})
    answers = Answers()
    master.remove_port(port.key, answers)
    assert all(w.channel.sent[-1][0] == {"op": Op.REMOVE_PORT, "key": port.key} for w in workers)
    assert port.socket is not None, "still open while a worker may be accepting on it"
    for worker in workers:
        master.pool.on_message(worker, {"op": Op.PORT_REMOVED, "key": port.key})
    assert port.socket is None and answers.calls == [(None, {"key": port.key})]
    assert port not in master.application.ports


def test_ports_do_not_change_during_a_rollout(master: Any) -> None:
    start(master)
    master.restart(None)
    port = new_port()
    with pytest.raises(PortError, match="restart or reload is in progress"):
        master.add_port(port, Answers())
    assert port.socket is None and port not in master.application.ports
