"""Live port changes: a port added to or removed from every running worker.

Adding: the master has bound the port; it sends the descriptor (SCM_RIGHTS) and the
pickled port to every serving worker, which adopts and serves it and answers
`port_added` (or `port_failed`). Removing: each worker is asked to stop accepting on it
and answers `port_removed`; then the master closes its socket. A change is done when every
worker it waited for has answered or exited, and its `done(error, result)` is called then.
Ports whose factory says `servedByMaster` (telnet) never reach the workers: the master's
loop serves them (`forkd.control.masterports`).
"""

from __future__ import annotations

import base64
import enum
import pickle
from dataclasses import dataclass, field
from typing import Any

from forkd.control.api import Done
from forkd.control.masterports import MasterPorts
from forkd.ports import PortError, port_key
from forkd.supervisor import logs
from forkd.supervisor.channel import Op
from forkd.supervisor.supervision import WorkerProcess
from forkd.supervisor.worker import served_by_worker
from forkd.supervisor.workers import WorkerPool

log = logs.get("master")


class ChangeKind(enum.StrEnum):
    ADD = "add"
    REMOVE = "remove"


ANSWERS: dict[str, ChangeKind] = {  # which kind of change an acknowledgement answers
    Op.PORT_ADDED: ChangeKind.ADD,
    Op.PORT_FAILED: ChangeKind.ADD,
    Op.PORT_REMOVED: ChangeKind.REMOVE,
}


@dataclass
class PortChange:
    """A port being added or removed: the workers that have yet to acknowledge."""

    key: str
    kind: ChangeKind
    port: Any
    waiting: set[int]  # worker pids
    done: Done | None
    errors: list[str] = field(default_factory=list)


def call(done: Done | None, error: str | None, result: Any = None) -> None:
    """Answer a completion callback; its failure is logged, never raised into the loop."""
    if done is None:
        return
    try:
        done(error, result)
    except Exception:
        log.exception("a completion callback failed")


class PortChanges:
    """The port changes in flight, and the worker acknowledgements that finish them."""

    def __init__(self, pool: WorkerPool, master_ports: MasterPorts) -> None:
        self.pool = pool
        self.master_ports = master_ports
        self.pending: list[PortChange] = []

    def add(self, port: Any, done: Done | None) -> None:
        """Serve `port` (already listening) everywhere it belongs."""
        key = port_key(port)
        if not served_by_worker(port):
            self.master_ports.serve(port)
            call(done, None, {"key": key, "workers": 0})
            return
        try:
            data = base64.b64encode(pickle.dumps(port)).decode()
        except Exception as error:
            port.stopListening()
            raise PortError(f"cannot hand {key} to the workers: {error}") from error
        change = PortChange(key, ChangeKind.ADD, port, set(), done)
        message = {"op": Op.ADD_PORT, "key": key, "port": data}
        for worker in self.pool.serving():
            if self.pool.send(worker, message, [port.fileno()]):
                change.waiting.add(worker.pid)
        log.info("port %s added; %d worker(s) to serve it", key, len(change.waiting))
        self._track(change)

    def remove(self, port: Any, done: Done | None) -> None:
        """Stop serving `port` everywhere; the workers' port is closed once they answered."""
        key = port_key(port)
        change = PortChange(key, ChangeKind.REMOVE, port, set(), done)
        if served_by_worker(port):
            for worker in self.pool.serving():
                if self.pool.send(worker, {"op": Op.REMOVE_PORT, "key": key}):
                    change.waiting.add(worker.pid)
        else:
            self.master_ports.unserve(port)
        log.info("port %s removed; %d worker(s) to stop serving it", key, len(change.waiting))
        self._track(change)

    def acknowledged(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        """A worker's `port_added`, `port_failed` or `port_removed`."""
        op = message.get("op")
        kind = ANSWERS.get(op) if isinstance(op, str) else None
        for change in self.pending:
            if change.kind == kind and change.key == message.get("key"):
                change.waiting.discard(worker.pid)
                if op == Op.PORT_FAILED:
                    change.errors.append(f"worker {worker.number}: {message.get('error')}")
                break
        self._finish()

    def worker_gone(self, worker: WorkerProcess) -> None:
        for change in self.pending:
            change.waiting.discard(worker.pid)
        self._finish()

    def _track(self, change: PortChange) -> None:
        self.pending.append(change)
        self._finish()

    def _finish(self) -> None:
        for change in [c for c in self.pending if not c.waiting]:
            self.pending.remove(change)
            if change.kind is ChangeKind.REMOVE and served_by_worker(change.port):
                change.port.stopListening()
            error = "; ".join(sorted(set(change.errors))) or None
            call(change.done, error, {"key": change.key})
