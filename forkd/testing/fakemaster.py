"""`FakeMaster`: the master as the control plane sees it, with no workers."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from forkd.control.api import Done, MasterAPI
from forkd.control.commands import scale as _scale
from forkd.control.masterports import MasterPorts
from forkd.ports import port_key
from forkd.supervisor.loop import Loop, Timer
from forkd.testing.waiting import wait_for


class FakeMaster:
    """The master as the control plane sees it (`forkd.control.api.MasterAPI`), with no
    workers: for testing the control socket, its commands, the shell and telnet.

    Its loop is the real master's (`forkd.supervisor.loop.Loop`, `clock` injectable), which
    a test steps (`step`, `run_until`) or runs in a thread (`running()`) while a blocking
    client talks to a ControlServer in the same process. A callback that raises is recorded
    in `loop_errors` (the real master must never see one: assert it stays empty). Every
    master call is recorded in `calls` as `(name, detail)`. Ports are really bound; nothing
    serves them except master-served ports, as in the real master. `hold = True` keeps
    `done` answers in `held` until `release()`; `fail_reload` makes reloads fail.
    """

    def __init__(self, application: Any = None, clock: Callable[[], float] = time.monotonic):
        self.loop = Loop(clock=clock)
        self.calls: list[tuple[str, Any]] = []
        self.application = application
        self.tapfile: str = application.tapfile if application is not None else ""
        if application is not None:
            application.runtime = self
        self.unsaved = False
        self.changes = 0
        self.target = 2
        self.generation = 1
        self.hold = False
        self.readiness = True  # what ready() answers (/readyz)
        self.held: list[Callable[[], None]] = []
        self.fail_reload: str | None = None
        self.master_ports = MasterPorts(self)
        self.loop_errors: list[BaseException] = []

    # -- the loop ---------------------------------------------------------------------------
    def _recording(self, callback: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                callback()
            except BaseException as error:  # recorded, so a test fails on it
                self.loop_errors.append(error)

        return run

    def add_reader(self, fileobj: Any, callback: Callable[[], None]) -> None:
        self.loop.add_reader(fileobj, self._recording(callback))

    def remove_reader(self, fileobj: Any) -> None:
        self.loop.remove_reader(fileobj)

    def add_writer(self, fileobj: Any, callback: Callable[[], None]) -> None:
        self.loop.add_writer(fileobj, self._recording(callback))

    def remove_writer(self, fileobj: Any) -> None:
        self.loop.remove_writer(fileobj)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.loop.call_later(delay, self._recording(callback))

    def step(self, timeout: float = 0.01) -> None:
        """One loop iteration: wait up to `timeout` for files, run them, then due timers."""
        self.loop.poll(min(timeout, self.loop.next_timeout()))
        self.loop.run_timers()

    def run_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Step the loop until `predicate` holds (AssertionError after `timeout`)."""

        def stepped() -> bool:
            if predicate():
                return True
            self.step(0.01)  # waits up to 10 ms for the fds: no sleep needed between polls
            return False

        wait_for(stepped, timeout, interval=0, message="the fake master's loop to get there")

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeMaster]:
        """Run the loop in a thread while the block talks to it with blocking clients."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.step(0.005)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(5)

    def close(self) -> None:
        self.loop.close()

    # -- the master API ---------------------------------------------------------------------
    def _answer(
        self,
        done: Done | None,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        if done is None:
            return
        if self.hold:
            self.held.append(lambda: done(error, result))
        else:
            self.call_later(0, lambda: done(error, result or {}))

    def release(self) -> None:
        held, self.held = self.held, []
        for answer in held:
            answer()

    def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        ports = self.application.ports if self.application is not None else []
        return {
            "pid": os.getpid(),
            "started": time.time() - 5,
            "uptime": 5.0,
            "tapfile": self.tapfile,
            "generation": self.generation,
            "target_workers": self.target,
            "unsaved": self.unsaved,
            "ready": self.readiness,
            "workers": [
                {
                    "number": n,
                    "pid": os.getpid(),
                    "generation": self.generation,
                    "state": "ready",
                    "connections": n,
                    "accepted": 10 * n,
                    "requests": 7 * n,
                    "rss": None,
                    "started": time.time() - 3,
                }
                for n in range(1, self.target + 1)
            ],
            "ports": [
                {"key": port_key(p), "repr": repr(p), "factory": type(p.factory).__qualname__}
                for p in ports
            ],
            "backoff": {"failures": 0, "next_spawn_in": None},
        }

    def add_port(self, port: Any, done: Done | None = None) -> None:
        self.calls.append(("add_port", port))
        port.startListening()  # raises PortError, as the real master does
        if getattr(port.factory, "servedByMaster", False):
            self.master_ports.serve(port)
        self._answer(done, None, {"key": port_key(port)})

    def remove_port(self, port: Any, done: Done | None = None) -> None:
        self.calls.append(("remove_port", port))
        self.master_ports.unserve(port)
        port.stopListening()
        self._answer(done, None, {"key": port_key(port)})

    def portAdded(self, port: Any) -> None:
        self.add_port(port, None)

    def portRemoved(self, port: Any) -> None:
        self.remove_port(port, None)

    def restart(self, done: Done | None) -> None:
        self.calls.append(("restart", None))
        self.generation += 1
        self._answer(done, None, {"generation": self.generation})

    def reload(self, discard: bool, done: Done | None) -> None:
        self.calls.append(("reload", discard))
        if self.fail_reload:
            self._answer(done, self.fail_reload, None)
            return
        self.generation += 1
        self._answer(done, None, {"generation": self.generation})

    def scale(self, spec: str) -> int:
        self.calls.append(("scale", spec))
        self.target = _scale.parse(spec, self.target)
        return self.target

    def reopen_logs(self) -> None:
        self.calls.append(("reopen_logs", None))

    def stop(self, graceful: bool = True) -> None:
        self.calls.append(("stop", graceful))

    def save(self, tag: str | None = None) -> str:
        self.calls.append(("save", tag))
        path = str(self.application.save(tag))
        if tag is None:
            self.unsaved = False
        return path

    def applicationSaved(self, path: str, tag: str | None) -> None:
        self.calls.append(("applicationSaved", (path, tag)))

    def application_changed(self) -> None:
        self.calls.append(("application_changed", None))
        self.changes += 1
        self.unsaved = True

    def metrics_exposition(self) -> bytes:
        self.calls.append(("metrics_exposition", None))
        return b"# a fake master's metrics\nforkd_fake 1.0\n"

    def ready(self) -> bool:
        return bool(self.readiness)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


if TYPE_CHECKING:  # mypy checks the fake against the protocol the control plane relies on
    _a_fake_is_a_master: MasterAPI = FakeMaster()
