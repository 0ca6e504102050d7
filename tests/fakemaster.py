"""A FakeMaster for control-plane tests: the master API of docs/INTERNALS.md, no workers.

It has a real `selectors` loop (`add_reader`/`remove_reader`, `add_writer`/`remove_writer`,
`call_later`) that a test steps (`step`, `run_until`) or runs in a thread
(`running()`), so a blocking client can talk to a ControlServer in the same process. Every
master call is recorded in `calls` as `(name, detail)`. Ports are really bound; nothing
serves them except master-served ports (forkd.control.masterports), as in the real master.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from forkd.control.commands import scale as scale_spec
from forkd.control.masterports import MasterPorts
from forkd.ports import port_key
from forkd.testing import DelayedCall as Timer
from forkd.testing import wait_for


class FakeMaster:
    def __init__(self, application: Any = None) -> None:
        self.selector = selectors.DefaultSelector()
        self._callbacks: dict[int, dict[int, Callable[[], None]]] = {}
        self._fds: dict[int, int] = {}  # id(fileobj) -> fd, so a closed socket can be removed
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.calls: list[tuple[str, Any]] = []
        self.application = application
        self.tapfile = application.tapfile if application is not None else None
        if application is not None:
            application.runtime = self
        self.unsaved = False
        self.changes = 0
        self.target = 2
        self.generation = 1
        self.hold = False  # keep `done` callbacks in `held` instead of answering at once
        self.held: list[Callable[..., Any]] = []
        self.fail_reload: str | None = None
        self.master_ports = MasterPorts(self)
        self.loop_errors: list[BaseException] = []

    # -- the loop ---------------------------------------------------------------------------
    def _register(self, fileobj: Any, event: int, callback: Callable[[], None]) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self._fds[id(fileobj)] = fd
        events = self._callbacks.setdefault(fd, {})
        had = bool(events)
        events[event] = callback
        mask = 0
        for ev in events:
            mask |= ev
        if had:
            self.selector.modify(fd, mask)
        else:
            self.selector.register(fd, mask)

    def _unregister(self, fileobj: Any, event: int) -> None:
        fd = self._fds.get(id(fileobj))
        if fd is None or fd not in self._callbacks:
            return
        events = self._callbacks[fd]
        events.pop(event, None)
        if events:
            mask = 0
            for ev in events:
                mask |= ev
            self.selector.modify(fd, mask)
        else:
            del self._callbacks[fd]
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)

    def add_reader(self, fileobj: Any, callback: Callable[[], None]) -> None:
        self._register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:
        self._unregister(fileobj, selectors.EVENT_READ)

    def add_writer(self, fileobj: Any, callback: Callable[[], None]) -> None:
        self._register(fileobj, selectors.EVENT_WRITE, callback)

    def remove_writer(self, fileobj: Any) -> None:
        self._unregister(fileobj, selectors.EVENT_WRITE)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def step(self, timeout: float = 0.01) -> None:
        """One loop iteration: ready fds, then due timers. Exceptions are recorded: the real
        master loop must never see one, and tests assert `loop_errors` stays empty."""
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
        for key, mask in self.selector.select(timeout):  # epoll waits even with no fds
            for event in (selectors.EVENT_READ, selectors.EVENT_WRITE):
                callback = self._callbacks.get(key.fd, {}).get(event)
                if mask & event and callback is not None:
                    self._run(callback)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._run(timer.callback, *timer.args)

    def _run(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except BaseException as error:  # recorded, so a test fails on it
            self.loop_errors.append(error)

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

    # -- the master API ---------------------------------------------------------------------
    def _answer(
        self,
        done: Callable[..., Any] | None,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        if done is None:
            return
        if self.hold:
            self.held.append(lambda: done(error, result))
        else:
            self.call_later(0, done, error, result or {})

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

    def add_port(self, port: Any, done: Callable[..., Any] | None) -> None:
        self.calls.append(("add_port", port))
        port.startListening()  # raises PortError, as the real master does
        if getattr(port.factory, "servedByMaster", False):
            self.master_ports.serve(port)
        self._answer(done, None, {"key": port_key(port)})

    def remove_port(self, port: Any, done: Callable[..., Any] | None) -> None:
        self.calls.append(("remove_port", port))
        self.master_ports.unserve(port)
        port.stopListening()
        self._answer(done, None, {"key": port_key(port)})

    def portAdded(self, port: Any) -> None:
        self.add_port(port, None)

    def portRemoved(self, port: Any) -> None:
        self.remove_port(port, None)

    def restart(self, done: Callable[..., Any]) -> None:
        self.calls.append(("restart", None))
        self.generation += 1
        self._answer(done, None, {"generation": self.generation})

    def reload(self, discard: bool, done: Callable[..., Any]) -> None:
        self.calls.append(("reload", discard))
        if self.fail_reload:
            self._answer(done, self.fail_reload, None)
            return
        self.generation += 1
        self._answer(done, None, {"generation": self.generation})

    def scale(self, spec: str) -> int:
        self.calls.append(("scale", spec))
        self.target = scale_spec.parse(spec, self.target)
        return self.target

    def reopen_logs(self) -> None:
        self.calls.append(("reopen_logs", None))

    def stop(self, graceful: bool) -> None:
        self.calls.append(("stop", graceful))

    def save(self, tag: str | None) -> str:
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

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]
