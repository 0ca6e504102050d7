"""`forkd start`, once its options are parsed: from a tap file to a running master.

In order, and why in that order:

1. load the tap, resolve the user and group, refuse a second master for the same pidfile:
   each can fail with a one-line `StartError` while the terminal still shows it;
2. daemonize unless in the foreground (the parent waits on `Readiness` for "ok" or the
   reason it failed, so `forkd start` returns only when the server serves);
3. open the log, lock the pidfile, bind every port and the control socket, as root if
   started as root; then drop privileges;
4. `Master.run` forks the workers and supervises them until stopped.

`resume_reload` is the other way in: the re-executed master of a reload (forkd.supervisor.resume).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from forkd import tapfile, taps
from forkd.control.server import ControlSocketError
from forkd.ports import PortError
from forkd.supervisor import activation, daemon, logs, privileges, resume, spawn
from forkd.supervisor.master import DEFAULT_GRACEFUL_TIMEOUT, DEFAULT_TIMEOUT, Master, MasterConfig
from forkd.supervisor.pidfile import AlreadyRunning, PidFile, running_pid
from forkd.supervisor.reloader import ReloadSettings

EXIT_FAILURE = 1


class StartError(Exception):
    """`forkd start` cannot start; the message is one line for the user."""


@dataclass
class StartOptions:
    """What `forkd start` was asked; None means the default beside the tap."""

    tap: str
    nodaemon: bool = False
    logfile: str | None = None  # a path, or "-" for stderr
    workers: int | None = None  # the number of CPUs
    pidfile: str | None = None
    control: str | None = None
    uid: str | None = None  # the tap's
    gid: str | None = None
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    save_on_stop: bool = True
    metrics: str | None = None  # HOST:PORT for /metrics, /livez, /readyz
    shutdown_delay: float = 0.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_rss: float = 0.0
    max_lifetime: float = 0.0
    log_format: str = "text"  # or "json"
    argv: list[str] = field(default_factory=list)  # to re-execute the same command line
    reload: ReloadSettings | None = None  # --reload (development): watch these for changes

    @property
    def tap_path(self) -> str:
        return os.path.abspath(self.tap)

    @property
    def pid_path(self) -> str:
        return os.path.abspath(self.pidfile or tapfile.beside(self.tap_path, ".pid"))

    @property
    def control_path(self) -> str:
        return os.path.abspath(self.control or tapfile.beside(self.tap_path, ".ctl"))

    def log_target(self) -> str:
        if self.logfile == "-":
            return "-"
        if self.logfile:
            return os.path.abspath(self.logfile)
        return "-" if self.nodaemon else tapfile.beside(self.tap_path, ".log")


def start(options: StartOptions) -> int:
    """Serve the tap until stopped; the exit code. Raises StartError before daemonizing."""
    tap = options.tap_path
    passed = activation.passed_sockets()  # before daemonizing: LISTEN_PID is this pid
    taps.importable_here()  # a tap made beside its module finds it from there too
    try:
        application = tapfile.load(tap)
    except tapfile.TapError as error:
        raise StartError(str(error)) from None
    try:
        spawn.preload(application)
    except Exception as error:  # the application's own import error, said before forking
        raise StartError(f"{os.path.basename(tap)}: {type(error).__name__}: {error}") from None
    for stale in tapfile.remove_stale_temporaries(tap):
        print(f"forkd: removed {stale}, left by an interrupted save", file=sys.stderr)
    try:
        uid = privileges.resolve_user(options.uid if options.uid is not None else application.uid)
        gid = privileges.resolve_group(options.gid if options.gid is not None else application.gid)
    except privileges.PrivilegeError as error:
        raise StartError(str(error)) from None
    holder = running_pid(options.pid_path)
    if holder is not None:
        raise StartError(f"{os.path.basename(tap)} is already running (pid {holder})")
    if options.logfile == "-" and not options.nodaemon:
        # a daemon writing to the terminal it left, and keeping the caller's stderr open
        # (`out=$(forkd start ... -l - 2>&1)` would never return)
        raise StartError("-l - (log to stderr) needs -n; a daemon logs to a file")

    readiness = daemon.Readiness() if options.nodaemon else daemon.daemonize()

    # -- from here on, in the daemon when daemonized: report failures through readiness
    def fail(reason: str) -> int:
        readiness.failed(reason)
        if options.nodaemon:
            print(f"forkd: {reason}", file=sys.stderr)
        return EXIT_FAILURE

    target = options.log_target()
    try:
        log_setup = logs.LogSetup(
            target, redirect_std=not options.nodaemon, log_format=options.log_format
        )
    except OSError as error:
        return fail(f"cannot open the log file {target}: {error.strerror or error}")
    pidfile = PidFile(options.pid_path)
    try:
        pidfile.acquire()
    except AlreadyRunning as error:
        return fail(str(error))
    except OSError as error:
        return fail(f"cannot write the pidfile {options.pid_path}: {error.strerror or error}")
    config = MasterConfig(
        graceful_timeout=options.graceful_timeout,
        timeout=options.timeout,
        save_on_stop=options.save_on_stop,
        control_path=options.control_path,
        pidfile_path=options.pid_path,
        metrics=options.metrics,
        shutdown_delay=options.shutdown_delay,
        max_requests=options.max_requests,
        max_requests_jitter=options.max_requests_jitter,
        max_rss=options.max_rss,
        max_lifetime=options.max_lifetime,
        argv=options.argv,
        reload=options.reload,
    )
    if options.workers is not None:
        config.workers = options.workers
    master = Master(application, config, log_setup, readiness, pidfile)
    try:
        activation.adopt(application.ports, passed)
        master.bind_ports()
        master.serve_metrics()
        master.start_control(owner=uid)
        privileges.drop(uid, gid)
    except (PortError, ControlSocketError, privileges.PrivilegeError, OSError, ValueError) as error:
        pidfile.release()
        return fail(str(error))
    code = master.run()
    # a stop (TERM, `forkd stop`) before every worker was ready: no-op once "ok" was sent
    readiness.failed(master.stop_reason or "stopped before it was ready (see its log)")
    if code and options.nodaemon and master.stop_reason:
        print(f"forkd: {master.stop_reason}", file=sys.stderr)
    return code


def resume_reload(state: dict[str, Any]) -> int:
    """The second half of a reload: this process is the re-executed master."""
    log_setup = logs.LogSetup(
        state.get("log") or "-",
        redirect_std=bool(state.get("log_redirect")),
        log_format=str(state.get("log_format") or "text"),
    )
    return resume.resume(state, log_setup).run()
