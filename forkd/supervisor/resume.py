"""The re-executed master image: build a running Master from the previous image's state.

`read_state` finds the JSON file `forkd.supervisor.reexec.exec_image` left (FORKD_REEXEC);
`resume` loads the tap, adopts the listening sockets by key, binds the new ports, adopts
the old workers and their channels, takes back the control socket and the `forkctl`
requests that were waiting, and starts a reload rollout. If the new workers fail, the
old application (unpickled from the state) is restored and keeps serving (`restore`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import socket
from typing import Any

from forkd import tapfile
from forkd.app import Application
from forkd.ports import port_key
from forkd.supervisor import logs, spawn
from forkd.supervisor.daemon import sd_notify
from forkd.supervisor.logs import LogSetup
from forkd.supervisor.master import Master, MasterConfig
from forkd.supervisor.pidfile import PidFile
from forkd.supervisor.reexec import ENV
from forkd.supervisor.rollout import RolloutKind
from forkd.supervisor.supervision import MasterState

log = logs.get("master")


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


def resume(state: dict[str, Any], log_setup: LogSetup) -> Master:
    """Build the master of the new image from `state`; it runs a reload rollout."""
    old_pickle = base64.b64decode(state["application"])
    tap = state["tapfile"]
    error = None
    try:
        application = tapfile.load(tap)
        spawn.preload(application)
    except Exception as problem:  # validated moments ago; raced by an edit: keep the old one
        error = str(problem)
        application = _unpickle(old_pickle, tap)
    config = MasterConfig.from_state(state["config"])
    pidfile = None
    if config.pidfile_path:
        pidfile = PidFile(config.pidfile_path, fd=_adopt_fd(state.get("pidfile_fd")))
    master = Master(application, config, log_setup, pidfile=pidfile)
    master.target = int(state["target"])
    master.pool.generation = int(state["generation"])
    master.started = float(state["started"])
    master.state = MasterState.RUNNING
    sockets = {key: socket.socket(fileno=fd) for key, fd in state["ports"].items()}
    for sock in sockets.values():
        os.set_inheritable(sock.fileno(), False)
    adopt_sockets(application, sockets)
    master.pool.restore(state["workers"])
    if master.reloader is not None:
        master.reloader.adopt(state.get("reloader_pid"))
    master.start_control(fd=_adopt_fd(state.get("control_fd")))
    master.metrics.restore(state.get("metrics"))
    master.serve_metrics(fd=_adopt_fd(state.get("metrics_fd")))
    if master.control is not None and state.get("control") is not None:
        master.control.resume(state["control"])  # takes back the detached requests
        finished = master.control.reload_finished
    else:
        finished = master.log_result("reload")

    if error is None:
        try:
            master.bind_ports()
        except Exception as problem:
            error = f"cannot bind the new ports: {problem}"
            restore(master, old_pickle, tap, sockets)
    master.rollouts.retired_sockets.extend(sockets.values())
    if error is not None:
        log.error("reload failed, the old application keeps serving: %s", error)
        sd_notify("READY=1")  # the end of the RELOADING=1 sent before the exec
        finished(error, None)
        return master

    def rollback() -> None:
        restore(master, old_pickle, tap, sockets)  # takes back retired ones
        master.rollouts.retired_sockets = list(sockets.values())

    master.rollouts.begin(RolloutKind.RELOAD, finished, rollback)
    return master


def _adopt_fd(fd: int | None) -> int | None:
    """An inherited descriptor goes back to close-on-exec, as every descriptor forkd owns."""
    if fd is not None:
        os.set_inheritable(fd, False)
    return fd


def _unpickle(data: bytes, tap: str) -> Application:
    application = pickle.loads(data)
    application.tapfile = tap
    return application  # type: ignore[no-any-return]


def adopt_sockets(application: Application, sockets: dict[str, socket.socket]) -> None:
    """Give each port of `application` its listening socket by key (removed from `sockets`;
    what is left there belongs to ports that are gone)."""
    for port in application.ports:
        sock = sockets.pop(port_key(port), None)
        if sock is not None:
            sock.setblocking(False)
            port.socket = sock


def restore(
    master: Master, old_pickle: bytes, tap: str, spare: dict[str, socket.socket]
) -> Application:
    """Put the previous application back, moving the listening sockets over by key."""
    old = _unpickle(old_pickle, tap)
    current = {port_key(p): p for p in master.application.ports}
    for port in old.ports:
        key = port_key(port)
        if key in current and getattr(current[key], "socket", None) is not None:
            port.socket, current[key].socket = current[key].socket, None
        elif key in spare:
            port.socket = spare.pop(key)
    for port in master.application.ports:  # bound for the new application only
        try:
            port.stopListening()
        except Exception:
            log.exception("reload rollback: cannot close %s", port_key(port))
    master.application.runtime = None
    old.runtime = master
    master.application = old
    return old
