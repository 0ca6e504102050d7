"""forkd: run a .tap file as a pre-fork server, stop it, ask how it is.

    forkd start FILE.tap [-n] [-l LOG|-] [-w N] [--pidfile P] [--control P] [-u USER]
                [-g GROUP] [--graceful-timeout S] [--timeout S] [--no-save]
    forkd stop FILE.tap [--now] [--pidfile P]
    forkd status FILE.tap [--pidfile P] [--control P] [--json]
    forkd serve MODULE:APP [--bind ADDR]... [-w N] [--threads N] [--tap FILE] [-D]
                [--certfile FILE [--keyfile FILE] [--ca-certs FILE [--cert-reqs WHEN]]]

`start` daemonizes unless -n and returns only once every port is bound and every worker is
ready (exit 0); otherwise it prints the reason on one line and exits 1. Exit 2: bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from forkd import tapfile, tls
from forkd.cli import add_command, parse_command, positive_seconds
from forkd.control.client import ControlError, request
from forkd.control.commands.status import table as status_table
from forkd.supervisor import startup
from forkd.supervisor.master import DEFAULT_GRACEFUL_TIMEOUT, DEFAULT_TIMEOUT
from forkd.tapfile import beside

EXIT_FAILURE = 1
STOP_WAIT = 120.0


class Failure(Exception):
    """A user-facing error: one line on stderr, exit 1."""


def worker_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"not a worker count: {text!r} (at least 1; WINCH or `forkctl scale 0` later)"
        )
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forkd", description="Run a .tap file as a pre-fork server.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_start(commands)
    add_serve(commands)
    stop = add_command(commands, "stop", help="stop the server of FILE.tap")
    stop.add_argument("tap", metavar="FILE.tap")
    stop.add_argument("--now", action="store_true", help="fast stop: do not drain")
    stop.add_argument("--pidfile", metavar="P")
    status = add_command(commands, "status", help="is FILE.tap served, and how")
    status.add_argument("tap", metavar="FILE.tap")
    status.add_argument("--pidfile", metavar="P")
    status.add_argument("--control", metavar="P")
    status.add_argument("--json", action="store_true")
    check = add_command(
        commands,
        "check",
        help="check FILE.tap without serving it (like nginx -t): "
        "it loads, its modules import, its ports pickle",
    )
    check.add_argument("tap", metavar="FILE.tap")
    return p


def add_start(commands: Any) -> None:
    """`forkd start`'s options (their defaults are forkd.supervisor.master's)."""
    start = add_command(commands, "start", help="start serving FILE.tap")
    start.add_argument("tap", metavar="FILE.tap")
    start.add_argument("-n", "--nodaemon", action="store_true", help="stay in the foreground")
    start.add_argument(
        "-l",
        "--logfile",
        metavar="LOG",
        help="log file, or - for stderr (default: stderr with -n, else <base>.log beside the tap)",
    )
    start.add_argument(
        "-w",
        "--workers",
        type=worker_count,
        default=None,
        help="worker processes (default: the number of CPUs)",
    )
    start.add_argument("--pidfile", metavar="P", help="default <base>.pid beside the tap")
    start.add_argument("--control", metavar="P", help="control socket, default <base>.ctl")
    start.add_argument("-u", "--uid", metavar="USER", help="run as USER (default: the tap's)")
    start.add_argument("-g", "--gid", metavar="GROUP", help="run as GROUP (default: the tap's)")
    start.add_argument(
        "--graceful-timeout",
        type=positive_seconds,
        default=DEFAULT_GRACEFUL_TIMEOUT,
        metavar="S",
        help="seconds a stopping worker may take to finish (default %(default)g)",
    )
    start.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="kill a worker silent this long (default %(default)g)",
    )
    start.add_argument(
        "--no-save", action="store_true", help="do not write <base>-shutdown.tap on stop"
    )


def add_serve(commands: Any) -> None:
    """`forkd serve`'s options: gunicorn's and uvicorn's names where they have one."""
    serve = add_command(
        commands,
        "serve",
        help="serve a WSGI or ASGI application, as gunicorn or uvicorn MODULE:APP does",
    )
    serve.add_argument("app", metavar="MODULE:APP", help="myproject.wsgi:application")
    serve.add_argument(
        "-b",
        "--bind",
        action="append",
        metavar="ADDR",
        help="HOST:PORT, [::1]:PORT or unix:PATH; repeatable "
        "(default 127.0.0.1:8000, or 0.0.0.0:$PORT when PORT is set)",
    )
    serve.add_argument(
        "-w",
        "--workers",
        type=worker_count,
        default=None,
        help="worker processes (default: $WEB_CONCURRENCY, else the number of CPUs)",
    )
    serve.add_argument("--threads", type=worker_count, default=8, help="per worker (default 8)")
    serve.add_argument(
        "--interface",
        choices=("auto", "wsgi", "asgi"),
        default="auto",
        help="the application's kind (default: asgi for a coroutine callable, else wsgi)",
    )
    for option, metavar, doc in tls.OPTIONS:  # the taps' own TLS options, by one table
        serve.add_argument(f"--{option}", metavar=metavar, help=doc.replace("%", "%%"))
    serve.add_argument("--tap", metavar="FILE", help="the tap to write (default MODULE.tap)")
    serve.add_argument("--chdir", metavar="DIR", help="change to DIR first")
    serve.add_argument("--pythonpath", metavar="DIR", help="import MODULE from DIR (default .)")
    serve.add_argument("-D", "--daemon", action="store_true", help="detach (default: foreground)")
    serve.add_argument("-l", "--logfile", metavar="LOG", help="log file, or - (default)")
    serve.add_argument("--pidfile", metavar="P")
    serve.add_argument("--control", metavar="P")


# -- start ---------------------------------------------------------------------------------
def run(options: startup.StartOptions) -> int:
    """`forkd start` or `forkd serve`, once the options are known (forkd.supervisor.startup)."""
    try:
        return startup.start(options)
    except startup.StartError as error:
        raise Failure(str(error)) from None


def start(args: argparse.Namespace, argv: list[str]) -> int:
    options = startup.StartOptions(
        tap=args.tap,
        nodaemon=args.nodaemon,
        logfile=args.logfile,
        workers=args.workers,
        pidfile=args.pidfile,
        control=args.control,
        uid=args.uid,
        gid=args.gid,
        graceful_timeout=args.graceful_timeout,
        timeout=args.timeout,
        save_on_stop=not args.no_save,
        argv=argv,
    )
    return run(options)


def serve(args: argparse.Namespace, argv: list[str]) -> int:
    """gunicorn's `MODULE:APP` line: write the tap (so forkctl reload, save and shell work
    on it), then start it as `forkd start` does."""
    from workers import hosting  # only serve needs the WSGI/ASGI machinery

    if args.chdir:
        try:
            os.chdir(args.chdir)
        except OSError as error:
            raise Failure(f"cannot change to {args.chdir}: {error.strerror or error}") from None
    module = args.app.partition(":")[0]
    tap = os.path.abspath(args.tap or f"{module.rpartition('.')[2] or 'app'}.tap")
    binds = args.bind or (
        [f"0.0.0.0:{os.environ['PORT']}"] if os.environ.get("PORT") else ["127.0.0.1:8000"]
    )
    workers = args.workers
    if workers is None and os.environ.get("WEB_CONCURRENCY", "").isdigit():
        workers = int(os.environ["WEB_CONCURRENCY"]) or None
    try:  # loaded once now: a bad certificate is this line, not workers failing to boot
        context_factory = tls.configured(
            args.certfile, args.keyfile, args.ca_certs, args.cert_reqs, tls.HTTP_ALPN
        )
    except tls.TLSError as error:
        raise Failure(str(error)) from None
    try:
        application = hosting.serve_application(
            args.app,
            binds,
            args.threads,
            os.path.abspath(args.pythonpath or "."),
            module,
            args.interface,
            context_factory,
        )
    except Exception as error:  # the application's own import error, or a bad --bind
        raise Failure(f"{args.app}: {type(error).__name__}: {error}") from None
    application.tapfile = tap
    application.save()
    options = startup.StartOptions(
        tap=tap,
        nodaemon=not args.daemon,
        logfile=args.logfile,
        workers=workers,
        pidfile=args.pidfile,
        control=args.control,
        argv=argv,
    )
    return run(options)


# -- stop and status -----------------------------------------------------------------------
def master_pid(args: argparse.Namespace) -> int:
    from forkd.supervisor.pidfile import running_pid

    tap = os.path.abspath(args.tap)
    pid_path = os.path.abspath(args.pidfile or beside(tap, ".pid"))
    pid = running_pid(pid_path)
    if pid is None:
        raise Failure(f"{os.path.basename(tap)} is not running")
    refuse_foreign(pid, pid_path)
    return pid


def refuse_foreign(pid: int, pid_path: str) -> None:
    """Signal only a forkd: a `--pidfile` naming another program's (locked) pidfile, or a
    file rewritten by hand, must not make `forkd stop` kill an unrelated process."""
    import psutil

    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline()) or process.name()
    except psutil.NoSuchProcess:
        raise Failure(f"pid {pid} in {pid_path} is gone") from None
    except psutil.Error:  # not ours to read (another user's): the lock is all we know
        return
    if "forkd" not in command:
        raise Failure(
            f"{pid_path} names pid {pid}, which is not forkd ({command[:60]}); not signalling it"
        )


def stop(args: argparse.Namespace) -> int:
    pid = master_pid(args)
    os.kill(pid, signal.SIGQUIT if args.now else signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"forkd: stopped (pid {pid})", file=sys.stderr)
            return 0
        time.sleep(0.05)
    raise Failure(f"pid {pid} did not stop within {STOP_WAIT:.0f}s")


def status(args: argparse.Namespace) -> int:
    """The master's own status over the control socket (the same table as forkctl's),
    or, with no control plane answering, what the process table says."""
    pid = master_pid(args)
    tap = os.path.abspath(args.tap)
    try:
        result = request(
            os.path.abspath(args.control or beside(tap, ".ctl")), "status", timeout=5.0
        )
    except (ControlError, OSError):
        import psutil

        children = psutil.Process(pid).children()
        result = {"pid": pid, "tapfile": tap, "workers": [{"pid": c.pid} for c in children]}
    text = json.dumps(result, indent=2, sort_keys=True) if args.json else status_table(result)
    with contextlib.suppress(BrokenPipeError):  # `forkd status app.tap | head`
        print(text, flush=True)
    return 0


def check(args: argparse.Namespace) -> int:
    """What a reload validates first, on demand: the tap loads (safely), every module it
    needs imports, every port pickles. Binds nothing and starts no factory."""
    from forkd.supervisor import reexec

    error = reexec.validate(args.tap)
    if error is not None:
        raise Failure(error)
    application = tapfile.load(args.tap)
    ports = ", ".join(repr(port) for port in application.ports) or "no ports"
    print(f"{application.tapfile}: ok: {application.name!r} with {ports}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from forkd.supervisor import resume

    state = resume.read_state()
    if state is not None:
        return startup.resume_reload(state)
    args = parse_command(parser(), argv)
    try:
        if args.command == "start":
            return start(args, argv)
        if args.command == "serve":
            return serve(args, argv)
        if args.command == "stop":
            return stop(args)
        if args.command == "check":
            return check(args)
        return status(args)
    except Failure as error:
        print(f"forkd: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
