"""The servers the benchmark runs, and how to start each one.

A `Peer` knows its server's name, the scenario it serves (`hello`: a fixed 14-byte body;
`static`: one 1 MiB file), how many workers it can run, whether it is installed here, and
the command line that starts it on a given port. The peers other than forkd run from
their own virtualenv (scripts/bench_setup.sh: .bench-venv in the repo, or wherever
$FORKD_BENCH_VENV names), so they never enter forkd's own environment; nginx and wrk come
from Debian. A peer that is not installed is skipped with a note.

forkd itself runs as `forkd start -n TAP -w N` from a tap written by `mktap`, as a user
would run it. While the master (`forkd start`) does not exist in this tree, forkd falls
back to scripts/serve_site.py, one process with no master, for one worker only, and the
result says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
PEER_APPS = SCRIPTS / "peers"
# the peers' virtualenv; scripts/bench_setup.sh reads the same variable
BENCH_VENV = Path(os.environ.get("FORKD_BENCH_VENV") or REPO / ".bench-venv")
STATIC_NAME = "big.bin"
STATIC_SIZE = 1 << 20
HELLO, STATIC = "hello", "static"
SETUP_HINT = "run scripts/bench_setup.sh"


@dataclass
class Context:
    """What every launch needs: a scratch directory for this server and the static root."""

    workdir: Path
    static_dir: Path
    venv: Path = BENCH_VENV


@dataclass
class Launch:
    """How to start one server: its argv, environment additions, the URL path to load."""

    argv: list[str]
    path: str
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Peer:
    """One server in one scenario.

    `missing(ctx)` says why it cannot run here (None when it can); `launch(ctx, port,
    workers)` prepares what it needs in ctx.workdir and returns the command.
    `max_workers(ctx)` is how many workers it can run (Twisted: 1).
    """

    server: str
    scenario: str
    missing: Callable[[Context], str | None]
    launch: Callable[[Context, int, int], Launch]
    max_workers: Callable[[Context], int] = lambda ctx: 64

    @property
    def label(self) -> str:
        return self.server if self.scenario == HELLO else f"{self.server} static"


def make_static_file(directory: Path, size: int = STATIC_SIZE) -> Path:
    """The file the static scenario serves: `size` random bytes (incompressible)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATIC_NAME
    if not path.exists() or path.stat().st_size != size:
        path.write_bytes(os.urandom(size))
    return path


def venv_tool(ctx: Context, name: str) -> Path:
    return ctx.venv / "bin" / name


def venv_has(ctx: Context, module: str) -> bool:
    """True when the peers' venv can import `module` (checked by its own interpreter)."""
    return _venv_imports(str(venv_tool(ctx, "python")), module)


@cache
def _venv_imports(python: str, module: str) -> bool:
    """Cached: an answer holds for the run. A check that timed out (a machine stalled by
    other work) raises RuntimeError instead, uncached, so that the peer is reported as
    failed this time, not as missing for the rest of the run."""
    if not Path(python).exists():
        return False
    try:
        done = subprocess.run(
            [python, "-c", f"import {module}"], capture_output=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`import {module}` in {python} took over 60 s") from None
    return done.returncode == 0


def peer_python(ctx: Context) -> str:
    """The interpreter for the hand-written peers: the peers' venv's, else forkd's own."""
    python = venv_tool(ctx, "python")
    return str(python) if python.exists() else sys.executable


def _needs_venv(module: str) -> Callable[[Context], str | None]:
    def missing(ctx: Context) -> str | None:
        if venv_has(ctx, module):
            return None
        return f"{module} not installed in {ctx.venv.name} ({SETUP_HINT})"

    return missing


def _peer_env() -> dict[str, str]:
    return {"PYTHONPATH": str(PEER_APPS)}


# --- forkd -----------------------------------------------------------------------------


def forkd_env() -> dict[str, str]:
    """forkd runs from this working tree, whether or not it is pip-installed."""
    return {"PYTHONPATH": str(REPO)}


def hello_tap_name() -> str | None:
    """The tap module that serves Hello (`mktap hello`), wherever the web engineer put it."""
    if (REPO / "workers" / "hello.py").exists():
        return "hello"
    if forkd_imports("forkd.web.hello") and _forkd_has_attr("forkd.web.hello", "getPorts"):
        return "forkd.web.hello"
    return None


def web_tap_name() -> str | None:
    return "web" if (REPO / "workers" / "web.py").exists() else None


@cache
def forkd_imports(module: str) -> bool:
    """True when forkd's own interpreter (the one running the benchmark) imports `module`."""
    return _forkd_python_ok(f"import {module}")


@cache
def _forkd_has_attr(module: str, attr: str) -> bool:
    return _forkd_python_ok(f"import {module}; {module}.{attr}")


def _forkd_python_ok(code: str) -> bool:
    env = {**os.environ, **forkd_env()}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, timeout=60, check=False
    )
    return done.returncode == 0


@cache
def master_available() -> bool:
    """True once `forkd start` exists in this tree (forkd/cli/forkd.py answers --help)."""
    if not (REPO / "forkd" / "cli" / "forkd.py").exists():
        return False
    env = {**os.environ, **forkd_env()}
    done = subprocess.run(
        [sys.executable, "-m", "forkd.cli.forkd", "start", "--help"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def mktap(workdir: Path, name: str, options: list[str], output: str) -> Path:
    """Run `mktap NAME OPTIONS -o OUTPUT` in `workdir`; the tap file's path."""
    tap = workdir / output
    argv = [sys.executable, "-m", "forkd.cli.mktap", "-o", str(tap), name, *options]
    done = subprocess.run(
        argv,
        cwd=workdir,
        env={**os.environ, **forkd_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mktap {name} failed: {done.stderr.strip() or done.stdout.strip()}")
    return tap


def _forkd_start(tap: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "forkd.cli.forkd", "start", "-n", str(tap), "-w", str(workers)]


def _serve_site(kind: str, port: int, static_dir: Path) -> list[str]:
    argv = [sys.executable, str(SCRIPTS / "serve_site.py"), kind, "--port", str(port)]
    return argv + (["--path", str(static_dir)] if kind == STATIC else [])


def _forkd_missing(tap_name: Callable[[], str | None]) -> Callable[[Context], str | None]:
    def missing(ctx: Context) -> str | None:
        if master_available() and tap_name() is not None:
            return None
        if (SCRIPTS / "serve_site.py").exists():
            return None
        return "neither `forkd start` with its tap nor scripts/serve_site.py exists yet"

    return missing


def _forkd_max_workers(tap_name: Callable[[], str | None]) -> Callable[[Context], int]:
    def max_workers(ctx: Context) -> int:
        return 64 if master_available() and tap_name() is not None else 1

    return max_workers


def _forkd_hello(ctx: Context, port: int, workers: int) -> Launch:
    name = hello_tap_name()
    if master_available() and name is not None:
        options = ["--port", str(port), "--interface", "127.0.0.1"]
        tap = mktap(ctx.workdir, name, options, "hello.tap")
        return Launch(_forkd_start(tap, workers), "/", forkd_env())
    return Launch(
        _serve_site(HELLO, port, ctx.static_dir),
        "/",
        forkd_env(),
        note="single process (scripts/serve_site.py): no master yet",
    )


def _forkd_static(ctx: Context, port: int, workers: int) -> Launch:
    name = web_tap_name()
    path = f"/{STATIC_NAME}"
    if master_available() and name is not None:
        options = ["--port", str(port), "--interface", "127.0.0.1", "--path", str(ctx.static_dir)]
        tap = mktap(ctx.workdir, name, options, "web.tap")
        return Launch(_forkd_start(tap, workers), path, forkd_env())
    return Launch(
        _serve_site(STATIC, port, ctx.static_dir),
        path,
        forkd_env(),
        note="single process (scripts/serve_site.py): no master yet",
    )


# --- the peers -------------------------------------------------------------------------


def _uvicorn(ctx: Context, port: int, workers: int) -> Launch:
    argv = [
        str(venv_tool(ctx, "uvicorn")), "asgi_hello:app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
        "--backlog", "1024",
    ]  # fmt: skip
    return Launch(argv, "/", _peer_env())


def _granian(ctx: Context, port: int, workers: int) -> Launch:
    argv = [
        str(venv_tool(ctx, "granian")), "--interface", "asgi",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "1", "--no-ws", "--no-access-log", "--log-level", "warning",
        "--backlog", "1024", "asgi_hello:app",
    ]  # fmt: skip
    return Launch(argv, "/", _peer_env())


def _gunicorn(ctx: Context, port: int, workers: int) -> Launch:
    argv = [
        str(venv_tool(ctx, "gunicorn")), "-k", "sync", "-w", str(workers),
        "-b", f"127.0.0.1:{port}", "--backlog", "1024", "--log-level", "warning",
        "wsgi_hello:app",
    ]  # fmt: skip
    return Launch(argv, "/", _peer_env())


def _twisted(ctx: Context, port: int, workers: int) -> Launch:
    argv = [str(venv_tool(ctx, "python")), str(PEER_APPS / "twisted_hello.py"), str(port)]
    return Launch(argv, "/", _peer_env())


def _uvloop_raw(ctx: Context, port: int, workers: int) -> Launch:
    argv = [peer_python(ctx), str(PEER_APPS / "uvloop_hello.py"), str(port), str(workers)]
    return Launch(argv, "/")


def nginx_binary() -> str | None:
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"):
        if Path(candidate).exists():
            return candidate
    return None


def nginx_config(ctx: Context, port: int, workers: int) -> Path:
    """Write nginx.conf for this run into ctx.workdir (from scripts/peers/nginx.conf.template)."""
    template = (PEER_APPS / "nginx.conf.template").read_text()
    body = "\n".join(line for line in template.splitlines() if not line.startswith("#"))
    conf = ctx.workdir / "nginx.conf"
    conf.write_text(
        body.format(workers=workers, prefix=ctx.workdir, port=port, static_dir=ctx.static_dir)
        + "\n"
    )
    return conf


def _nginx_missing(ctx: Context) -> str | None:
    return None if nginx_binary() else f"nginx not installed ({SETUP_HINT})"


def _nginx(path: str) -> Callable[[Context, int, int], Launch]:
    def launch(ctx: Context, port: int, workers: int) -> Launch:
        conf = nginx_config(ctx, port, workers)
        binary = nginx_binary() or "nginx"
        error_log = str(ctx.workdir / "error.log")
        argv = [binary, "-p", str(ctx.workdir), "-c", str(conf), "-e", error_log]
        return Launch(argv, path)

    return launch


def _uvloop_missing(ctx: Context) -> str | None:
    python = peer_python(ctx)
    if python == sys.executable:
        return None if forkd_imports("uvloop") else "uvloop not installed"
    return None if venv_has(ctx, "uvloop") else f"uvloop not installed ({SETUP_HINT})"


PEERS: list[Peer] = [
    Peer("forkd", HELLO, _forkd_missing(hello_tap_name), _forkd_hello,
         _forkd_max_workers(hello_tap_name)),
    Peer("uvicorn", HELLO, _needs_venv("uvicorn"), _uvicorn),
    Peer("granian", HELLO, _needs_venv("granian"), _granian),
    Peer("gunicorn", HELLO, _needs_venv("gunicorn"), _gunicorn),
    Peer("nginx", HELLO, _nginx_missing, _nginx("/")),
    Peer("twisted", HELLO, _needs_venv("twisted.web"), _twisted, lambda ctx: 1),
    Peer("uvloop-raw", HELLO, _uvloop_missing, _uvloop_raw),
    Peer("forkd", STATIC, _forkd_missing(web_tap_name), _forkd_static,
         _forkd_max_workers(web_tap_name)),
    Peer("nginx", STATIC, _nginx_missing, _nginx(f"/static/{STATIC_NAME}")),
]  # fmt: skip

SERVERS = sorted({peer.server for peer in PEERS})
SCENARIOS = [HELLO, STATIC]


def select(
    only: list[str] | None, scenarios: list[str], among: list[Peer] | None = None
) -> list[Peer]:
    """The peers named in `only` (all when None) in the given scenarios, in the order of
    `among` (a suite's peers; PEERS, the HTTP suite's, when None)."""
    among = PEERS if among is None else among
    servers = sorted({peer.server for peer in among})
    unknown = sorted(set(only or []) - set(servers))
    if unknown:
        raise ValueError(f"unknown server(s): {', '.join(unknown)} (known: {', '.join(servers)})")
    return [
        peer
        for peer in among
        if peer.scenario in scenarios and (only is None or peer.server in only)
    ]
