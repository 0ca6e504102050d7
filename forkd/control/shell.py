"""The live Python shell that runs inside the master (`forkctl shell`, the telnet tap).

The seed: "telnet into your application and change things there on the run ... import
__main__. In __main__, there is a global named "application"." So the namespace holds
`application`, and `sys.modules['__main__'].application` is set before each statement.

The client sends the whole pending source each time (what it has typed since the last
complete statement); `Shell.push(source)` compiles it with `codeop` the way
`code.InteractiveInterpreter` does: incomplete -> `more=True` (the client prompts `... `),
complete -> run it and return what it printed (tracebacks included), never raising.

How changes reach the workers: `application.listenTCP(...)` and `removePort` are already
live (the application's runtime hook, the master, binds and tells the workers). Anything
else a statement changes in the application's pickled state (`application.ports[1].factory
.resource.path = 'static'`) is invisible to workers that forked earlier, so after each
statement the shell compares a fingerprint of the application taken before and after, with
ports added or removed by the statement left out, and if it differs calls
`master.application_changed()`, which starts a graceful rolling restart, and says so.

The master is single-threaded: while a statement runs, nothing else does. So a statement
gets `Shell.timeout` seconds (SIGALRM, where the platform has it); one that takes longer
(`while True: pass`, `time.sleep(600)`) is interrupted with ShellTimeout, reported like any
other exception, and the master goes back to supervising.
"""

from __future__ import annotations

import builtins
import codeop
import contextlib
import io
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.wire import one_line
from forkd.ports import PortError, port_key

MAX_OUTPUT = 256 * 1024  # what one statement may print; more is cut (the frame limit is 1 MiB)

Fingerprint = tuple[bytes, dict[str, bytes]]


class ShellTimeout(BaseException):
    """A shell statement ran longer than Shell.timeout and was interrupted."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Any:
    """Interrupt the code in the block after `seconds`.

    A no-op without SIGALRM or off the main thread (signals are delivered only there). An
    alarm already armed by someone else is put back, less the time the block took."""
    if (
        not hasattr(signal, "setitimer")
        or seconds <= 0
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise ShellTimeout(f"statement interrupted after {seconds:g}s (Shell.timeout)")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, interrupt)
    earlier, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if earlier:
            left = earlier - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


def fingerprint(application: Any) -> Fingerprint:
    """The application's pickled state: everything but the ports, and each port by key."""
    state = dict(application.__getstate__()) if hasattr(application, "__getstate__") else {}
    ports = state.pop("ports", None) or []
    try:
        rest = pickle.dumps(state, protocol=5)
    except Exception as error:  # an unpicklable attribute: a change we must still notice
        rest = f"unpicklable: {type(error).__name__}: {error}".encode()
    by_key: dict[str, bytes] = {}
    for port in ports:
        try:
            by_key[port_key(port)] = pickle.dumps(port, protocol=5)
        except Exception as error:
            by_key[port_key(port)] = f"unpicklable: {type(error).__name__}: {error}".encode()
    return rest, by_key


def changed(before: Fingerprint, after: Fingerprint) -> bool:
    """Whether anything but the set of ports differs (added/removed ports are already live)."""
    if before[0] != after[0]:
        return True
    common = before[1].keys() & after[1].keys()
    return any(before[1][key] != after[1][key] for key in common)


class RecordingRuntime:
    """Stands in for the master as `application.runtime` while a statement runs, noting
    which ports went through listenTCP/addPort/removePort (already live) so the shell can
    tell them from ports put into or taken out of `application.ports` directly."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.added: set[str] = set()
        self.removed: set[str] = set()

    def portAdded(self, port: Any) -> None:
        self.runtime.portAdded(port)
        self.added.add(port_key(port))

    def portRemoved(self, port: Any) -> None:
        self.runtime.portRemoved(port)
        self.removed.add(port_key(port))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runtime, name)


class Shell:
    """One shell session: a namespace and a compiler that remembers `from __future__`."""

    timeout = 10.0  # seconds one statement may run in the master

    def __init__(self, master: MasterAPI) -> None:
        self.master = master
        self.namespace: dict[str, Any] = {
            "__name__": "__forkd_shell__",
            "__builtins__": builtins,
            "application": master.application,
        }
        self.compile = codeop.CommandCompiler()

    def push(self, source: str) -> tuple[str, bool]:
        """Compile and maybe run `source`; (output, more). Never raises."""
        try:
            code = self.compile(source, "<shell>", "single")
        except (SyntaxError, OverflowError, ValueError):
            return self._format_exception(syntax=True), False
        if code is None:
            return "", True
        application = self.master.application
        self.namespace["application"] = application
        main = sys.modules.get("__main__")
        if main is not None:
            with contextlib.suppress(Exception):
                main.application = application  # type: ignore[attr-defined]
        before = fingerprint(application)
        ports_before = {port_key(port): port for port in application.ports}
        runtime = getattr(application, "runtime", None)
        recording = RecordingRuntime(runtime) if runtime is not None else None
        if recording is not None:
            application.runtime = recording
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            try:
                with time_limit(self.timeout):
                    exec(code, self.namespace)
            except SystemExit:
                output.write("the shell cannot exit the master; press Ctrl-D to leave\n")
            except BaseException:  # KeyboardInterrupt too: nothing may escape into the loop
                output.write(self._format_exception())
            finally:
                if recording is not None and application.runtime is recording:
                    application.runtime = runtime
            if recording is not None and self.master.application is application:
                self._reconcile_ports(application, ports_before, recording, output)
        text = output.getvalue()
        if len(text) > MAX_OUTPUT:
            text = text[:MAX_OUTPUT] + f"\n[output cut at {MAX_OUTPUT} characters]\n"
        after = fingerprint(self.master.application)
        if changed(before, after):
            text += self._apply_change()
        elif before[1].keys() != after[1].keys():
            # A live listenTCP/removePort: already served, but not in the tap file yet, so
            # a reload must not silently drop it.
            self.master.unsaved = True
        return text, False

    def _reconcile_ports(
        self,
        application: Any,
        before: dict[str, Any],
        recording: RecordingRuntime,
        output: io.StringIO,
    ) -> None:
        """Make `application.ports` edited as a list (`ports.clear()`, `ports.append(p)`)
        take effect as removePort/addPort would have: served ports are never left running
        unlisted, and listed ports are never left unserved."""
        after = {port_key(port): port for port in application.ports}
        for key in before.keys() - after.keys() - recording.removed:
            try:
                recording.runtime.portRemoved(before[key])
                output.write(f"# {key} left application.ports: it is no longer served\n")
            except Exception as error:
                output.write(f"# could not stop serving {key}: {one_line(str(error))}\n")
        for key in after.keys() - before.keys() - recording.added:
            try:
                recording.runtime.portAdded(after[key])
                output.write(f"# {key} joined application.ports: it is served now\n")
            except Exception as error:
                application.ports = [p for p in application.ports if p is not after[key]]
                output.write(
                    f"# {key} is not served and was taken out of application.ports:"
                    f" {one_line(str(error))}\n"
                )

    def _apply_change(self) -> str:
        try:
            self.master.application_changed()
        except Exception as error:
            return f"# the application changed but the rolling restart failed to start: {error}\n"
        return (
            "# the application changed: a graceful rolling restart started, so every worker "
            "serves the change (application.save() keeps it in the tap file)\n"
        )

    @staticmethod
    def _format_exception(syntax: bool = False) -> str:
        kind, value, tb = sys.exc_info()
        if syntax or tb is None or isinstance(value, PortError):
            # a port in use is the user's situation, not a bug: one line, not forkd's frames
            return "".join(traceback.format_exception_only(kind, value))
        # Drop the shell's own frame: the traceback starts at the user's statement.
        return "".join(traceback.format_exception(kind, value, tb.tb_next))
