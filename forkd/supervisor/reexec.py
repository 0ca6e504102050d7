"""Reload by re-executing the master in place: validation, the state file, and resuming.

1. `spawn_validator`: a fresh interpreter (`python -m forkd.supervisor.reexec validate TAP`)
   loads the tap with fresh imports and checks that every port's factory pickles; it prints one JSON
   line. A tap that does not load never gets as far as the exec.
2. `reexec`: the master writes a JSON state file (each kept descriptor and its role: port
   key, worker pid/number/generation, control socket, pidfile; the settings; the old
   application pickled, for a rollback), makes those descriptors inheritable, and execs
   `python -m forkd.cli.forkd <the same arguments>` with FORKD_REEXEC naming the file. Same
   PID, so systemd and the pidfile stay right, and the old workers stay its children.
3. `resume`: the new image loads the tap, adopts the listening sockets by key, binds the
   new ports, adopts the old workers and their channels, and starts a rollout; when the new
   generation is ready the old one drains and ports that are gone close. If the new workers
   fail, the old application (unpickled from the state) is restored and keeps serving.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import pickle
import signal
import socket
import sys
import tempfile
from typing import Any

from forkd.ports import port_key
from forkd.supervisor import logs
from forkd.supervisor.channel import Channel
from forkd.supervisor.daemon import sd_notify
from forkd.supervisor.supervision import KILL_GRACE, WorkerProcess, WorkerState, clock

ENV = "FORKD_REEXEC"
log = logs.get("master")


# -- 1. validation -------------------------------------------------------------------------
def spawn_validator(tapfile: str) -> tuple[int, int]:
    """Start the validator; return (pid, read end of its stdout)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "forkd.supervisor.reexec", "validate", tapfile],
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


def validate(tapfile: str) -> str | None:
    """In the validator process: load the tap, check that each factory pickles."""
    from forkd import tapfile as tapfiles

    try:
        application = tapfiles.load(tapfile)
        for port in application.ports:
            pickle.dumps(port)
    except tapfiles.TapError as error:
        return str(error)
    except Exception as error:
        return f"{tapfile}: {type(error).__name__}: {error}"
    return None


# -- 2. the exec ---------------------------------------------------------------------------
def reexec(master: Any) -> str:
    """Exec the new master image; returns (an error) only if the exec failed."""
    fds: list[int] = []
    state: dict[str, Any] = {
        "tapfile": master.tapfile,
        "argv": master.config.argv,
        "config": {
            "workers": master.config.workers,
            "graceful_timeout": master.config.graceful_timeout,
            "timeout": master.config.timeout,
            "save_on_stop": master.config.save_on_stop,
            "control_path": master.config.control_path,
            "pidfile_path": master.config.pidfile_path,
            "argv": master.config.argv,
        },
        "target": master.target,
        "generation": master.generation,
        "started": master.started,
        "application": base64.b64encode(pickle.dumps(master.application)).decode(),
        "ports": {},
        "workers": [],
        "control_fd": None,
        "control": None,
        "pidfile_fd": None,
        "log": getattr(master.log_setup, "path", None),
        "log_redirect": getattr(master.log_setup, "redirect_std", False),
    }
    for port in master.application.ports:
        if getattr(port, "socket", None) is not None:
            state["ports"][port_key(port)] = port.fileno()
            fds.append(port.fileno())
    for worker in master.workers.values():
        if worker.channel.closed:
            continue
        try:  # what is queued for it would be forgotten by the exec
            worker.channel.flush_blocking(1.0)
        except OSError as error:
            log.warning("reload: worker %d: cannot flush its channel: %s", worker.number, error)
        state["workers"].append(
            {
                "pid": worker.pid,
                "number": worker.number,
                "generation": worker.generation,
                "fd": worker.channel.fileno(),
                "state": worker.state.value,
                "was_ready": worker.was_ready,
                # a draining worker's SIGKILL deadline, as seconds from now (clocks are per
                # image only in theory, but a relative deadline needs no shared epoch)
                "kill_in": None if worker.kill_at is None else worker.kill_at - clock(),
            }
        )
        fds.append(worker.channel.fileno())
    if master.control is not None:
        with contextlib.suppress(Exception):
            state["control_fd"] = master.control.fileno()
            fds.append(state["control_fd"])
        keep = getattr(master.control, "reexec_state", None)
        if keep is not None:
            state["control"] = keep()
            fds.extend(int(fd) for fd in (state["control"] or {}).get("fds", []))
    detach = getattr(master.reloading, "detach", None)
    if (
        detach is not None
        and state["control"] is None
        and not getattr(master.reloading, "done", False)
    ):  # the forkctl that asked gets its answer from the new image
        try:
            state["reply"] = detach()
            fds.append(int(state["reply"]["fd"]))
        except Exception:
            log.exception("reload: cannot keep the client's connection across the exec")
    if master.pidfile is not None and master.pidfile.fd is not None:
        state["pidfile_fd"] = master.pidfile.fd
        fds.append(master.pidfile.fd)
    handle, path = tempfile.mkstemp(prefix="forkd-reexec-", suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump(state, out)
    for fd in fds:
        os.set_inheritable(fd, True)
    log.info("reload: re-executing the master (pid %d)", os.getpid())
    for handler in logs.get("").handlers:
        handler.flush()
    env = dict(os.environ, **{ENV: path})
    # execve resets caught signals to their default action, which for HUP, USR1, TERM... is
    # to die: a signal landing before the new image installs its handlers would kill the
    # master. Blocked, they stay pending across the exec until `Master.run` unblocks them.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, handled_signals())
    try:
        os.execve(
            sys.executable, [sys.executable, "-m", "forkd.cli.forkd", *master.config.argv], env
        )
    except OSError as error:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return str(error)
    return "exec returned"  # pragma: no cover


def handled_signals() -> set[signal.Signals]:
    """The signals the master handles (blocked across the exec)."""
    from forkd.supervisor.master import HANDLED_SIGNALS

    return {getattr(signal, f"SIG{name}") for name in HANDLED_SIGNALS}


# -- 3. the new image ----------------------------------------------------------------------
def read_state() -> dict[str, Any] | None:
    """The state left by the previous image, or None when this is a plain start."""
    path = os.environ.pop(ENV, None)
    if not path:
        return None
    try:
        with open(path) as handle:
            return dict(json.load(handle))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def resume(state: dict[str, Any], log_setup: Any) -> Any:
    """Build the master of the new image from `state`; it runs a reload rollout."""
    from forkd import tapfile as tapfiles
    from forkd.supervisor.master import Master, MasterConfig, MasterState
    from forkd.supervisor.pidfile import PidFile

    old_pickle = base64.b64decode(state["application"])
    error = None
    try:
        application = tapfiles.load(state["tapfile"])
    except Exception as problem:  # validated moments ago; raced by an edit: keep the old one
        error = str(problem)
        application = pickle.loads(old_pickle)
        application.tapfile = state["tapfile"]
    config = MasterConfig(**state["config"])
    pidfile = None
    if state.get("pidfile_path") or state["config"].get("pidfile_path"):
        pidfile = PidFile(state["config"]["pidfile_path"], fd=state.get("pidfile_fd"))
    master = Master(application, config, log_setup, pidfile=pidfile)
    master.target = int(state["target"])
    master.generation = int(state["generation"])
    master.started = float(state["started"])
    master.state = MasterState.RUNNING
    sockets = {key: socket.socket(fileno=fd) for key, fd in state["ports"].items()}
    for sock in sockets.values():
        os.set_inheritable(sock.fileno(), False)
    adopt_sockets(application, sockets)
    for entry in state["workers"]:
        os.set_inheritable(entry["fd"], False)
        channel = Channel(socket.socket(fileno=entry["fd"]))
        worker = WorkerProcess(entry["pid"], entry["number"], entry["generation"], channel, clock())
        worker.state = WorkerState(entry["state"])
        worker.was_ready = bool(entry.get("was_ready", worker.state is not WorkerState.BOOTING))
        if entry.get("kill_in") is not None:
            worker.kill_at = clock() + max(0.0, float(entry["kill_in"]))
        elif worker.state is WorkerState.TIMED_OUT:  # from an image that kept no deadline
            worker.kill_at = clock()
        elif worker.state is WorkerState.STOPPING:
            worker.kill_at = clock() + config.graceful_timeout + KILL_GRACE
        master.workers[worker.pid] = worker
        master.loop.add_reader(channel.fd, functools.partial(master.on_channel, worker))
    if state.get("pidfile_fd") is not None:
        os.set_inheritable(state["pidfile_fd"], False)
    control_fd = state.get("control_fd")
    if control_fd is not None:
        os.set_inheritable(control_fd, False)
    master.start_control(fd=control_fd)
    finished: Any = master._log_result("reload")
    resume_control = getattr(master.control, "resume", None)
    if resume_control is not None and state.get("control") is not None:
        resume_control(state["control"])  # takes back the detached `forkctl reload`
        finished = getattr(master.control, "reload_finished", finished)
    elif state.get("reply") and master.control is not None:
        os.set_inheritable(int(state["reply"]["fd"]), False)
        finished = master.control.adopt_reply(state["reply"])

    if error is None:
        try:
            master.bind_ports()
        except Exception as problem:
            error = f"cannot bind the new ports: {problem}"
            application = restore(master, old_pickle, state["tapfile"], sockets)
    if error is not None:
        master.retired_sockets.extend(sockets.values())
        log.error("reload failed, the old application keeps serving: %s", error)
        sd_notify("READY=1")  # the end of the RELOADING=1 sent before the exec
        finished(error, None)
        return master
    master.retired_sockets.extend(sockets.values())

    def rollback() -> None:
        restore(master, old_pickle, state["tapfile"], sockets)  # takes back retired ones
        master.retired_sockets = list(sockets.values())

    master.begin_rollout("reload", finished, rollback)
    return master


def adopt_sockets(application: Any, sockets: dict[str, socket.socket]) -> None:
    """Give each port of `application` its listening socket by key (removed from `sockets`;
    what is left there belongs to ports that are gone)."""
    for port in application.ports:
        sock = sockets.pop(port_key(port), None)
        if sock is not None:
            sock.setblocking(False)
            port.socket = sock


def restore(master: Any, old_pickle: bytes, tap: str, spare: dict[str, socket.socket]) -> Any:
    """Put the previous application back, moving the listening sockets over by key."""
    old = pickle.loads(old_pickle)
    old.tapfile = tap
    current = {port_key(p): p for p in master.application.ports}
    for port in old.ports:
        key = port_key(port)
        if key in current and getattr(current[key], "socket", None) is not None:
            port.socket, current[key].socket = current[key].socket, None
        elif key in spare:
            port.socket = spare.pop(key)
    for port in master.application.ports:  # bound for the new application only
        with contextlib.suppress(Exception):
            port.stopListening()
    master.application.runtime = None
    old.runtime = master
    master.application = old
    return old


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "validate":
        error = validate(argv[1])
        print(json.dumps({"ok": error is None, "error": error}))
        return 0 if error is None else 1
    print("usage: python -m forkd.supervisor.reexec validate FILE.tap", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
