"""forkd: run a .tap file as a pre-fork server, stop it, ask how it is.

    forkd start FILE.tap [-n] [-l LOG|-] [-w N] [--pidfile P] [--control P] [-u USER]
                [-g GROUP] [--graceful-timeout S] [--timeout S] [--no-save] [--reload ...]
    forkd stop FILE.tap [--now] [--pidfile P]
    forkd status FILE.tap [--pidfile P] [--control P] [--json]
    forkd serve MODULE:APP [--bind ADDR]... [-w N] [--threads N] [--tap FILE] [-D]
                [--reload [--reload-dir DIR]... [--reload-include GLOB]...
                 [--reload-exclude GLOB]... [--reload-delay S]]
                [--access-logfile FILE|-] [--access-logformat FORMAT|json]
                [--certfile FILE [--keyfile FILE] [--ca-certs FILE [--cert-reqs WHEN]]]
    forkd --version

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
from collections.abc import Callable
from typing import Any

from forkd import tapfile, tls
from forkd.cli import add_command, add_version, parse_command, positive_seconds
from forkd.cli.reload_options import ReloadOptionError, add_reload_options, reload_settings
from forkd.control.client import ControlError, request
from forkd.control.commands.status import table as status_table
from forkd.supervisor import startup
from forkd.supervisor.master import DEFAULT_GRACEFUL_TIMEOUT, DEFAULT_TIMEOUT
from forkd.supervisor.reloader import ReloadSettings
from forkd.tapfile import beside
from forkd.usage import UsageError

EXIT_FAILURE = 1
EXIT_USAGE = 2
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
    add_version(p)
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
    add_supervision(start)
    start.add_argument(
        "--no-save", action="store_true", help="do not write <base>-shutdown.tap on stop"
    )
    add_reload_options(start, "the tap's directory, and the tap")


def add_supervision(command: Any) -> None:
    """What `forkd start` and `forkd serve` share: the master's files, user and timeouts."""
    command.add_argument("--pidfile", metavar="P", help="default <base>.pid beside the tap")
    command.add_argument("--control", metavar="P", help="control socket, default <base>.ctl")
    command.add_argument(
        "-u", "--uid", "--user", metavar="USER", help="run as USER (default: the tap's)"
    )
    command.add_argument(
        "-g", "--gid", "--group", metavar="GROUP", help="run as GROUP (default: the tap's)"
    )
    command.add_argument(
        "--graceful-timeout",
        type=positive_seconds,
        default=DEFAULT_GRACEFUL_TIMEOUT,
        metavar="S",
        help="seconds a stopping worker may take to finish (default %(default)g)",
    )
    command.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="kill a worker silent this long (default %(default)g)",
    )
    command.add_argument(
        "--metrics",
        type=metrics_address,
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus), /livez and /readyz from the master there",
    )
    command.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="the master's and workers' log lines: text, or one JSON object per line",
    )
    recycling = command.add_argument_group("worker recycling (one at a time, replacement first)")
    recycling.add_argument(
        "--max-requests", type=count, default=0, metavar="N", help="after N requests"
    )
    recycling.add_argument(
        "--max-requests-jitter",
        type=count,
        default=0,
        metavar="J",
        help="plus a random 0..J per worker, so they do not all go at once",
    )
    recycling.add_argument(
        "--max-rss", type=positive_seconds, default=0.0, metavar="MIB", help="above MIB resident"
    )
    recycling.add_argument(
        "--max-lifetime", type=positive_seconds, default=0.0, metavar="S", help="after S seconds"
    )
    command.add_argument(
        "--shutdown-delay",
        type=positive_seconds,
        default=0.0,
        metavar="S",
        help="on TERM, fail /readyz and keep serving S seconds before draining (Kubernetes)",
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
        help="HOST:PORT, [::1]:PORT, unix:PATH or fd://N; repeatable "
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
    for name, metavar, doc in tls.OPTIONS:  # the taps' own TLS options, by one table
        serve.add_argument(f"--{name}", metavar=metavar, help=doc.replace("%", "%%"))
    serve.add_argument("--tap", metavar="FILE", help="the tap to write (default MODULE.tap)")
    serve.add_argument("--chdir", metavar="DIR", help="change to DIR first")
    serve.add_argument("--pythonpath", metavar="DIR", help="import MODULE from DIR (default .)")
    serve.add_argument("-D", "--daemon", action="store_true", help="detach (default: foreground)")
    serve.add_argument(
        "-l", "--logfile", "--log-file", metavar="LOG", help="log file, or - (default)"
    )
    serve.add_argument(
        "--backlog", type=worker_count, default=None, help="listen queue length of each bind"
    )
    add_supervision(serve)
    serve.add_argument(
        "--no-preload",
        action="store_true",
        help="import the application in each worker (default: once, in the master)",
    )
    from workers.site_options import SITE_OPTIONS

    for option in SITE_OPTIONS:
        names = [f"--{name}" for name in (option.name, *option.aliases)]
        serve.add_argument(
            *names,
            dest=option.dest,
            type=argument_type(option.coerce),
            help=option.describe().replace("%", "%%"),  # argparse %-formats help texts
        )
    add_reload_options(serve, "the --pythonpath directory")


def argument_type(coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """`coerce` for argparse, which shows the reason of an ArgumentTypeError but answers
    a ValueError with only "invalid <name> value" (which is right for int and float)."""
    if coerce in (int, float, str):
        return coerce

    def parse(text: str) -> Any:
        try:
            return coerce(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


# -- start ---------------------------------------------------------------------------------
def run(options: startup.StartOptions) -> int:
    """`forkd start` or `forkd serve`, once the options are known (forkd.supervisor.startup)."""
    try:
        return startup.start(options)
    except startup.StartError as error:
        raise Failure(str(error)) from None


def watching(
    args: argparse.Namespace, default_dirs: list[str], files: tuple[str, ...] = ()
) -> ReloadSettings | None:
    """--reload's settings, or None; a Failure for options that cannot be honoured."""
    try:
        return reload_settings(args, default_dirs, files)
    except ReloadOptionError as error:
        raise Failure(str(error)) from None


def start(args: argparse.Namespace, argv: list[str]) -> int:
    tap = os.path.abspath(args.tap)
    reload = watching(args, [os.path.dirname(tap)], files=(tap,))
    options = startup.StartOptions(
        tap=args.tap,
        nodaemon=args.nodaemon,
        logfile=args.logfile,
        workers=args.workers,
        save_on_stop=not args.no_save,
        **supervision(args),
        argv=argv,
        reload=reload,
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
    pythonpath = os.path.abspath(args.pythonpath or ".")
    reload = watching(args, [pythonpath])
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
    settings = hosting.site_settings(vars(args))  # UsageError for a bad environment value
    try:
        application = hosting.serve_application(
            args.app,
            binds,
            args.threads,
            pythonpath,
            module,
            args.interface,
            {**settings, "preloadApp": not args.no_preload},
            args.backlog,
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
        **supervision(args),
        argv=argv,
        reload=reload,
    )
    return run(options)


def supervision(args: argparse.Namespace) -> dict[str, Any]:
    """The StartOptions that `add_supervision`'s options give, for start and serve alike."""
    return {
        "pidfile": args.pidfile,
        "control": args.control,
        "uid": args.uid,
        "gid": args.gid,
        "graceful_timeout": args.graceful_timeout,
        "timeout": args.timeout,
        "metrics": args.metrics,
        "shutdown_delay": args.shutdown_delay,
        "max_requests": args.max_requests,
        "max_requests_jitter": args.max_requests_jitter,
        "max_rss": args.max_rss,
        "max_lifetime": args.max_lifetime,
        "log_format": args.log_format,
    }


def count(text: str) -> int:
    """A non-negative whole number (0: off)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"want a whole number, not {text!r}")
    return int(text)


def metrics_address(text: str) -> str:
    """--metrics HOST:PORT (or :PORT, [::1]:PORT), checked at once."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"want HOST:PORT, not {text!r}")
    return text


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
    except UsageError as error:  # a bad value argparse could not see: from the environment
        print(f"forkd {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
