"""Public fakes for testing protocols and tap modules without sockets or processes.

    from forkd.testing import StringTransport, connect
    proto = connect(MyFactory(), StringTransport())
    proto.dataReceived(b"hello\\r\\n")
    assert proto.transport.value() == b"hello\\r\\n"

`StringTransport` records what a protocol writes and whether it asked to disconnect;
`Clock` is a fake of the event loop's timers (`call_later`/`callLater`, `advance`).
The project's own tests use these; tap authors are welcome to.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from forkd.protocol import ConnectionDone


class StringTransport:
    """A transport that keeps written bytes in memory.

    `value()` returns everything written so far, `clear()` forgets it. `disconnecting` is
    True after loseConnection, `aborted` after abortConnection. Writing str raises TypeError,
    as a real transport does. `producerState` is 'producing', 'paused' or 'stopped'.
    """

    def __init__(
        self,
        peer: tuple[Any, ...] = ("INET", "127.0.0.1", 54321),
        host: tuple[Any, ...] = ("INET", "127.0.0.1", 8007),
    ) -> None:
        self.io = bytearray()
        self.peer = peer
        self.host = host
        self.disconnecting = False
        self.aborted = False
        self.producer: Any = None
        self.producerState = "producing"

    def write(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self.io += data

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.aborted = True

    def getPeer(self) -> tuple[Any, ...]:
        return self.peer

    def getHost(self) -> tuple[Any, ...]:
        return self.host

    def pauseProducing(self) -> None:
        self.producerState = "paused"

    def resumeProducing(self) -> None:
        self.producerState = "producing"

    def stopProducing(self) -> None:
        self.producerState = "stopped"

    def registerProducer(self, producer: Any, streaming: bool = True) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def value(self) -> bytes:
        return bytes(self.io)

    def clear(self) -> None:
        self.io.clear()


def connect(factory: Any, transport: StringTransport | None = None) -> Any:
    """Build a protocol from `factory` for a fake peer and connect it to `transport`."""
    transport = transport or StringTransport()
    protocol = factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol


def disconnect(protocol: Any, reason: BaseException | None = None) -> None:
    """Tell `protocol` its connection is gone, the way a worker would."""
    protocol.connected = 0
    if getattr(protocol, "_lost_takes_reason", True):
        protocol.connectionLost(reason or ConnectionDone("Connection was closed cleanly."))
    else:
        protocol.connectionLost()


class DelayedCall:
    """A timer handle from Clock: `cancel()` it, check `cancelled`."""

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """A fake clock for timer logic: time moves only when `advance(seconds)` is called.

    It offers both asyncio's spelling (`time`, `call_later`, `call_at`) and Twisted's
    (`seconds`, `callLater`), so code written for the event loop can be tested with it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[tuple[float, int, DelayedCall]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    seconds = time

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> DelayedCall:
        call = DelayedCall(when, callback, args)
        heapq.heappush(self._queue, (when, next(self._order), call))
        return call

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> DelayedCall:
        return self.call_at(self.now + delay, callback, *args)

    callLater = call_later

    def advance(self, seconds: float) -> None:
        """Move time forward and run every timer that falls due, in order."""
        self.now += seconds
        while self._queue and self._queue[0][0] <= self.now:
            _, _, call = heapq.heappop(self._queue)
            if not call.cancelled:
                call.callback(*call.args)

    @property
    def pending(self) -> list[DelayedCall]:
        return [call for _, _, call in sorted(self._queue) if not call.cancelled]


# -- running a real forkd in tests ----------------------------------------------------------
# free_port and wait_for/wait_for_async for tests on real sockets; forkd, forkctl and mktap
# run in subprocesses (run_forkd, forkctl, mktap, make_tap); RunningForkd, `forkd start -n`
# for the length of a `with` block.

import asyncio as _asyncio  # noqa: E402
import contextlib as _contextlib  # noqa: E402
import os as _os  # noqa: E402
import pathlib as _pathlib  # noqa: E402
import signal as _signal  # noqa: E402
import socket as _socket  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402
import time as _time  # noqa: E402

REPO_ROOT = str(_pathlib.Path(__file__).resolve().parents[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no other free_port() call, here or in another process,
    will return for the next minute, and that a server may bind at once.

    Binding port 0 and closing the socket, the obvious way, hands the port back to the
    kernel at once: the next bind to port 0 anywhere on the machine may get it (another
    test's free_port(), under pytest-xdist a concurrent one), and the server the caller
    starts then fails with "address in use". So the port is parked in TIME_WAIT, as Yelp's
    ephemeral-port-reserve does: listen on it, connect to it once, and close the accepted
    end first. That end then holds the port for TIME_WAIT's 60 s on Linux, while bind() to
    port 0 in every process skips it and so does the kernel's choice of a source port for
    connect(); yet a server setting SO_REUSEADDR, as forkd's TCPPort does, binds it
    straight away, since a connection in TIME_WAIT does not block such a bind.

    What is left of the race is a process that binds this very port by number, and a bind
    without SO_REUSEADDR fails on it for that minute (a test that wants to prove nothing
    listens on the port must set SO_REUSEADDR too: a listener still refuses it then).
    """
    with _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM) as listener:
        listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        with _socket.create_connection(address, timeout=5):
            accepted, _ = listener.accept()
            accepted.close()  # the side that closes first is the one left in TIME_WAIT
        return int(address[1])


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll `condition` until it returns something truthy, and return that; AssertionError
    after `timeout` seconds. `message` names what was awaited in the error; a callable is
    called only then, so it can show state at the deadline (a log's tail, say)."""
    deadline = _time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if _time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {_said(message)}")
        _time.sleep(interval)


async def wait_for_async(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.005,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """wait_for for a coroutine on a running event loop: between polls it yields to the
    loop (asyncio.sleep), so the connections under test make progress meanwhile."""
    deadline = _time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if _time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {_said(message)}")
        await _asyncio.sleep(interval)


def _said(message: str | Callable[[], str]) -> str:
    return message if isinstance(message, str) else message()


def forkd_env(extra_paths: Iterable[str] = ()) -> dict[str, str]:
    """The environment a forkd, forkctl or mktap subprocess needs: the source tree (and
    `extra_paths`, where test tap modules live) first on PYTHONPATH, and none of the
    caller's NOTIFY_SOCKET or FORKD_CONTROL, which would send it to a systemd or a master
    that the test does not own."""
    env = dict(_os.environ)
    paths = [REPO_ROOT, *extra_paths]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = _os.pathsep.join(paths)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("FORKD_CONTROL", None)
    return env


def forkd_command(*args: str) -> list[str]:
    """The argv of `forkd ARGS`, run by this interpreter."""
    return [_sys.executable, "-m", "forkd.cli.forkd", *args]


def forkctl_command(*args: str) -> list[str]:
    """The argv of `forkctl ARGS`, run by this interpreter."""
    return [_sys.executable, "-m", "forkd.cli.forkctl", *args]


def mktap_command(*args: str) -> list[str]:
    """The argv of `mktap ARGS`, run by this interpreter."""
    return [_sys.executable, "-m", "forkd.cli.mktap", *args]


def run_forkd(
    *args: str,
    extra_paths: Iterable[str] = (),
    cwd: str | _os.PathLike[str] | None = None,
    timeout: float = 60.0,
) -> _subprocess.CompletedProcess[str]:
    """Run `forkd ARGS` to the end (`start` without -n returns once the daemon serves) and
    return its exit code, stdout and stderr (as text); AssertionError on a timeout.
    `RunningForkd` is the master in the foreground, for the length of a `with` block."""
    return _finished(forkd_command(*args), extra_paths, cwd, timeout, None)


def forkctl(
    ctl: str | None,
    *args: str,
    extra_paths: Iterable[str] = (),
    cwd: str | _os.PathLike[str] | None = None,
    timeout: float = 60.0,
    forkd: RunningForkd | None = None,
) -> _subprocess.CompletedProcess[str]:
    """Run `forkctl -c CTL ARGS` to the end and return its exit code, stdout and stderr
    (as text). With `ctl` None there is no -c: forkctl finds the socket itself, in `cwd`.

    A forkctl still running after `timeout` seconds is killed and fails the test with an
    AssertionError naming the command (and showing the tail of `forkd`'s log if given)."""
    command = forkctl_command(*(["-c", ctl] if ctl is not None else []), *args)
    return _finished(command, extra_paths, cwd, timeout, forkd)


def mktap(
    *args: str,
    extra_paths: Iterable[str] = (),
    cwd: str | _os.PathLike[str] | None = None,
    timeout: float = 60.0,
) -> _subprocess.CompletedProcess[str]:
    """Run `mktap ARGS` to the end and return its exit code, stdout and stderr (as text).
    `extra_paths` are where the tap modules it is given live; AssertionError on a timeout."""
    return _finished(mktap_command(*args), extra_paths, cwd, timeout, None)


def make_tap(
    path: str | _os.PathLike[str],
    module: str,
    *options: str,
    extra_paths: Iterable[str] = (),
) -> str:
    """Write the tap file `path` with `mktap -o PATH MODULE OPTIONS` and return its path;
    AssertionError with mktap's stderr if it fails."""
    done = mktap("-o", str(path), module, *options, extra_paths=extra_paths)
    assert done.returncode == 0, f"mktap {module} {' '.join(options)}: {done.stderr}"
    return str(path)


def _finished(
    command: list[str],
    extra_paths: Iterable[str],
    cwd: str | _os.PathLike[str] | None,
    timeout: float,
    forkd: RunningForkd | None,
) -> _subprocess.CompletedProcess[str]:
    try:
        return _subprocess.run(
            command,
            env=forkd_env(extra_paths),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except _subprocess.TimeoutExpired:
        log = f"\n{forkd.log()[-6000:]}" if forkd is not None else ""
        shown = " ".join(command[2:])
        raise AssertionError(f"{shown}: not finished in {timeout}s{log}") from None


class RunningForkd:
    """`forkd start -n TAP` in a subprocess, for the length of a `with` block.

    Entering waits for the master's READY=1 (it is given a private NOTIFY_SOCKET, as
    systemd would), so the ports serve once `with` returns; leaving stops it (TERM, then
    KILL after `stop_timeout`). `log()` is what it wrote to stderr."""

    def __init__(
        self,
        tap: str,
        *args: str,
        workers: int = 2,
        extra_paths: Iterable[str] = (),
        ready_timeout: float = 20.0,
        stop_timeout: float = 20.0,
    ) -> None:
        self.tap = str(tap)
        self.args = list(args)
        self.workers = workers
        self.env = forkd_env(extra_paths)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.process: _subprocess.Popen[bytes] | None = None
        self.log_path = self.tap + ".test-stderr"
        self.returncode: int | None = None

    def __enter__(self) -> RunningForkd:
        notify_path = self.tap + ".notify"
        with _contextlib.suppress(FileNotFoundError):
            _os.unlink(notify_path)
        notify = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        notify.bind(notify_path)
        _os.chmod(notify_path, 0o666)  # as systemd's: reachable after forkd drops privileges
        env = dict(self.env, NOTIFY_SOCKET=notify_path)
        command = forkd_command("start", self.tap, "-n", "-w", str(self.workers), *self.args)
        with open(self.log_path, "wb") as stderr:
            self.process = _subprocess.Popen(
                command, env=env, stderr=stderr, stdout=_subprocess.DEVNULL
            )
        try:
            deadline = _time.monotonic() + self.ready_timeout
            while True:
                notify.settimeout(0.1)
                try:
                    if b"READY=1" in notify.recv(4096):
                        return self
                except TimeoutError:
                    pass
                if self.process.poll() is not None:
                    raise AssertionError(f"forkd exited {self.process.returncode}: {self.log()}")
                if _time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"forkd not ready in {self.ready_timeout}s: {self.log()}")
        finally:
            notify.close()
            with _contextlib.suppress(FileNotFoundError):
                _os.unlink(notify_path)

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        with (
            _contextlib.suppress(OSError),
            open(self.log_path, encoding="utf-8", errors="replace") as handle,
        ):
            return handle.read()
        return ""

    def signal(self, signum: int) -> None:
        _os.kill(self.pid, signum)

    def worker_pids(self) -> set[int]:
        """Pids of the master's live worker processes (by their process title)."""
        import psutil

        pids = set()
        with _contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                with _contextlib.suppress(psutil.Error):
                    if "forkd: worker" in " ".join(child.cmdline()) and child.status() != "zombie":
                        pids.add(child.pid)
        return pids

    def wait_workers(
        self, count: int, timeout: float = 15.0, exclude: Iterable[int] = ()
    ) -> set[int]:
        """Wait until exactly `count` workers run (none of them in `exclude`)."""
        excluded = set(exclude)

        def settled() -> set[int] | None:
            pids = self.worker_pids()
            return pids if len(pids) == count and not pids & excluded else None

        return set(
            wait_for(settled, timeout, message=lambda: f"{count} workers: {self.log()[-2000:]}")
        )

    def stop(self, signum: int = _signal.SIGTERM) -> int:
        if self.process is None:
            return -1
        if self.process.poll() is None:
            with _contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)
            try:
                self.process.wait(self.stop_timeout)
            except _subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.returncode = self.process.returncode
        return self.returncode


# -- a fake master for the control plane -----------------------------------------------------
import threading as _threading  # noqa: E402

from forkd.control.api import Done, MasterAPI  # noqa: E402
from forkd.control.commands import scale as _scale  # noqa: E402
from forkd.control.masterports import MasterPorts  # noqa: E402
from forkd.ports import port_key  # noqa: E402
from forkd.supervisor.loop import Loop, Timer  # noqa: E402


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

    def __init__(self, application: Any = None, clock: Callable[[], float] = _time.monotonic):
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

    @_contextlib.contextmanager
    def running(self) -> Iterator[FakeMaster]:
        """Run the loop in a thread while the block talks to it with blocking clients."""
        stop = _threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.step(0.005)

        thread = _threading.Thread(target=loop, daemon=True)
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
            "pid": _os.getpid(),
            "started": _time.time() - 5,
            "uptime": 5.0,
            "tapfile": self.tapfile,
            "generation": self.generation,
            "target_workers": self.target,
            "unsaved": self.unsaved,
            "workers": [
                {
                    "number": n,
                    "pid": _os.getpid(),
                    "generation": self.generation,
                    "state": "ready",
                    "connections": n,
                    "accepted": 10 * n,
                    "requests": 7 * n,
                    "rss": None,
                    "started": _time.time() - 3,
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

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


if TYPE_CHECKING:  # mypy checks the fake against the protocol the control plane relies on
    _a_fake_is_a_master: MasterAPI = FakeMaster()
