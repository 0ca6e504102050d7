"""Reload by re-executing the master in place: validation, then the exec.

1. `spawn_validator`: a fresh interpreter (`python -m forkd.supervisor.reexec validate
   TAP`) loads the tap with fresh imports and checks that every port's factory pickles
   and every TLS port's certificate loads; it prints one JSON line. A tap that does not
   load never gets as far as the exec.
2. `exec_image`: the master's snapshot (`Master.snapshot`: each kept descriptor and its
   role: port key, worker pid/number/generation, control socket, pidfile; the settings; the
   old application pickled, for a rollback) goes to a JSON state file, those descriptors
   become inheritable, and the master execs `python -m forkd.cli.forkd <the same
   arguments>` with FORKD_REEXEC naming the file. Same PID, so systemd and the pidfile stay
   right, and the old workers stay its children.
3. `forkd.supervisor.resume`: the new image loads the tap, adopts the listening sockets by
   key, binds the new ports, adopts the old workers and their channels, and starts a
   rollout; when the new generation is ready the old one drains and ports that are gone
   close. If the new workers fail, the old application (unpickled from the state) is
   restored and keeps serving.

Nothing here imports the master: it hands this module a snapshot, the new image is built
by `forkd.supervisor.resume`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import sys
import tempfile
from typing import Any

from forkd import tapfile, tls
from forkd.supervisor import logs, spawn

ENV = "FORKD_REEXEC"
log = logs.get("master")


# -- 1. validation -------------------------------------------------------------------------
def spawn_validator(path: str) -> tuple[int, int]:
    """Start the validator; return (pid, read end of its stdout)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "forkd.supervisor.reexec", "validate", path],
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, write_end, 1),
                (os.POSIX_SPAWN_CLOSE, read_end),
            ],
        )
    finally:
        os.close(write_end)
    return pid, read_end


def validation_result(fd: int, status: int) -> str | None:
    """Read the validator's verdict (it has exited): None when the tap is good."""
    chunks = []
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    os.close(fd)
    text = b"".join(chunks).decode("utf-8", "replace").strip().splitlines()
    try:
        verdict = json.loads(text[-1]) if text else {}
    except ValueError:
        verdict = {}
    if verdict.get("ok") is True and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return None
    return str(verdict.get("error") or "the tap validator failed (see the log)")


def validate(path: str) -> str | None:
    """In the validator process: load the tap, check that each factory pickles and that
    each TLS port's certificate and key load (as the user the workers run as)."""
    try:
        application = tapfile.load(path)
        for port in application.ports:
            pickle.dumps(port)
            tls.check(port)
        spawn.preload(application)  # the new image will: an import error fails here first
    except tapfile.TapError as error:
        return str(error)
    except Exception as error:
        return f"{path}: {type(error).__name__}: {error}"
    return None


# -- 2. the exec ---------------------------------------------------------------------------
def write_state(state: dict[str, Any]) -> str:
    """The state in a private temporary file (0600: it holds the pickled application);
    its path. A write that fails removes the file and raises."""
    handle, path = tempfile.mkstemp(prefix="forkd-reexec-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(state, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


def exec_image(
    state: dict[str, Any], fds: list[int], argv: list[str], signals: set[signal.Signals]
) -> str:
    """Write `state` to a file the new image finds through FORKD_REEXEC, keep `fds` open
    across the exec, and exec `python -m forkd.cli.forkd ARGV`; returns (the error) only
    if the exec failed, with everything as it was."""
    try:
        path = write_state(state)
    except OSError as error:  # a full disk: refuse the reload, keep serving
        return f"cannot write the reload state: {error.strerror or error}"
    for fd in fds:
        os.set_inheritable(fd, True)
    log.info("reload: re-executing the master (pid %d)", os.getpid())
    for handler in logs.get("").handlers:
        with contextlib.suppress(OSError):  # what a full log cannot take is lost either way
            handler.flush()
    env = dict(os.environ, **{ENV: path})
    # execve resets caught signals to their default action, which for HUP, USR1, TERM... is
    # to die: a signal landing before the new image installs its handlers would kill the
    # master. Blocked, they stay pending across the exec until `Master.run` unblocks them.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        os.execve(sys.executable, [sys.executable, "-m", "forkd.cli.forkd", *argv], env)
    except OSError as error:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return str(error)
    return "exec returned"  # pragma: no cover


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "validate":
        error = validate(argv[1])
        print(json.dumps({"ok": error is None, "error": error}))
        return 0 if error is None else 1
    print("usage: python -m forkd.supervisor.reexec validate FILE.tap", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
