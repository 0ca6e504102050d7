"""The hosting suite: `forkd serve MODULE:APP` against the servers that host Python apps.

Scenarios (each server runs the same app module from scripts/peers/):

- `wsgi-hello` (wsgi_hello:app, 14-byte body): forkd serve vs gunicorn's sync and gthread
  workers, granian `--interface wsgi`, waitress;
- `asgi-hello` (asgi_hello:app) and `asgi-json` (asgi_json:app, a 10 KiB JSON body encoded
  once): forkd serve vs uvicorn (uvloop + httptools), granian asgi, hypercorn (uvloop), and
  gunicorn's ASGI worker (its own `-k asgi` where the installed gunicorn has it, else
  uvicorn's UvicornWorker; the row's note says which);
- `flask` (flask_json:app, GET /json) vs gunicorn gthread, `fastapi` (fastapi_json:app, GET
  /json) vs uvicorn.

Every threaded WSGI server gets the same 8 threads per worker (forkd serve's default):
gunicorn gthread `--threads 8`, waitress `--threads 8`, granian `--blocking-threads 8`
(its own default would be backlog/2 = 512). No server writes an access log. waitress has
no worker processes, so it is measured with 1 worker only.

The `ws-echo` scenario (forkd vs uvicorn, messages/s) is in PENDING below: wrk speaks no
WebSocket, so scripts/bench_websocket.py measures it with its own load generator, and this
suite's report points there.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from benchkit.peers import (
    PEER_APPS,
    SETUP_HINT,
    Context,
    Launch,
    Peer,
    forkd_env,
    forkd_imports,
    venv_has,
    venv_tool,
)
from benchkit.report import Target

WSGI_HELLO, ASGI_HELLO, ASGI_JSON, FLASK, FASTAPI = (
    "wsgi-hello", "asgi-hello", "asgi-json", "flask", "fastapi",
)  # fmt: skip
SCENARIOS = [WSGI_HELLO, ASGI_HELLO, ASGI_JSON, FLASK, FASTAPI]
WEBSOCKET_ECHO = "ws-echo"
THREADS = 8  # per worker, for every threaded WSGI server: forkd serve's default

# scenario -> (module:app, URL path, the interface forkd serve is told)
APPS: dict[str, tuple[str, str, str]] = {
    WSGI_HELLO: ("wsgi_hello:app", "/", "wsgi"),
    ASGI_HELLO: ("asgi_hello:app", "/", "asgi"),
    ASGI_JSON: ("asgi_json:app", "/", "asgi"),
    FLASK: ("flask_json:app", "/json", "wsgi"),
    FASTAPI: ("fastapi_json:app", "/json", "asgi"),
}
FRAMEWORK = {FLASK: "flask", FASTAPI: "fastapi"}  # what both sides must be able to import

# Scenarios the suite reports but cannot measure yet, and why (the report shows the reason).
PENDING: dict[str, str] = {
    WEBSOCKET_ECHO: "measured by scripts/bench_websocket.py (wrk speaks no WebSocket; "
    "forkd vs uvicorn, messages/s)",
}

# The floors issue 10 sets, in req/s; the report adds the same comparison at equal CPU.
TARGETS = [
    Target(ASGI_HELLO, "uvicorn", 1.3),
    Target(ASGI_HELLO, "granian", 1.0),
    Target(WSGI_HELLO, "gunicorn-gthread", 3.0),
]

# The packages whose versions the report states, each side's own.
PEER_PACKAGES = [
    "gunicorn", "gunicorn-h1c", "granian", "uvicorn", "hypercorn", "waitress", "uvloop",
    "httptools", "flask", "werkzeug", "fastapi", "starlette", "pydantic",
]  # fmt: skip
FORKD_PACKAGES = [
    "uvloop", "httptools", "flask", "werkzeug", "fastapi", "starlette", "pydantic",
]  # fmt: skip


def _peer_env() -> dict[str, str]:
    return {"PYTHONPATH": str(PEER_APPS)}


def _in_venv(*modules: str) -> Callable[[Context], str | None]:
    def missing(ctx: Context) -> str | None:
        for module in modules:
            if not venv_has(ctx, module):
                return f"{module} not installed in {ctx.venv} ({SETUP_HINT})"
        return None

    return missing


# --- forkd -----------------------------------------------------------------------------


def _forkd_missing(scenario: str) -> Callable[[Context], str | None]:
    def missing(ctx: Context) -> str | None:
        framework = FRAMEWORK.get(scenario)
        if framework is not None and not forkd_imports(framework):
            return f"{framework} not installed for forkd's interpreter (pip install -e '.[test]')"
        return None

    return missing


def _forkd(scenario: str) -> Callable[[Context, int, int], Launch]:
    """`forkd serve MODULE:APP`, as a user runs it: the real master and its workers."""
    app, path, interface = APPS[scenario]

    def launch(ctx: Context, port: int, workers: int) -> Launch:
        argv = [
            sys.executable, "-m", "forkd.cli.forkd", "serve", app,
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--threads", str(THREADS), "--interface", interface,
            "--pythonpath", str(PEER_APPS), "--tap", str(ctx.workdir / "serve.tap"),
        ]  # fmt: skip
        return Launch(argv, path, forkd_env())

    return launch


# --- WSGI peers ------------------------------------------------------------------------


def _gunicorn(worker: str, scenario: str) -> Callable[[Context, int, int], Launch]:
    app, path, _ = APPS[scenario]

    def launch(ctx: Context, port: int, workers: int) -> Launch:
        argv = [
            str(venv_tool(ctx, "gunicorn")), "-k", worker, "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--backlog", "1024", "--log-level", "warning",
        ]  # fmt: skip
        if worker == "gthread":
            argv += ["--threads", str(THREADS)]
        return Launch([*argv, app], path, _peer_env())

    return launch


def _granian(interface: str, scenario: str) -> Callable[[Context, int, int], Launch]:
    app, path, _ = APPS[scenario]

    def launch(ctx: Context, port: int, workers: int) -> Launch:
        argv = [
            str(venv_tool(ctx, "granian")), "--interface", interface,
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--http", "1", "--no-ws", "--no-access-log", "--log-level", "warning",
            "--backlog", "1024",
        ]  # fmt: skip
        if interface == "wsgi":
            argv += ["--blocking-threads", str(THREADS)]
        else:
            argv += ["--loop", "uvloop"]
        return Launch([*argv, app], path, _peer_env())

    return launch


def _waitress(scenario: str) -> Callable[[Context, int, int], Launch]:
    app, path, _ = APPS[scenario]

    def launch(ctx: Context, port: int, workers: int) -> Launch:
        argv = [
            str(venv_tool(ctx, "waitress-serve")), "--listen", f"127.0.0.1:{port}",
            "--threads", str(THREADS), "--backlog", "1024", app,
        ]  # fmt: skip
        return Launch(argv, path, _peer_env())

    return launch


# --- ASGI peers ------------------------------------------------------------------------


def _uvicorn(scenario: str) -> Callable[[Context, int, int], Launch]:
    app, path, _ = APPS[scenario]

    def launch(ctx: Context, port: int, workers: int) -> Launch:
        argv = [
            str(venv_tool(ctx, "uvicorn")), app,
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "--backlog", "1024",
        ]  # fmt: skip
        return Launch(argv, path, _peer_env())

    return launch


def _hypercorn(scenario: str) -> Callable[[Context, int, int], Launch]:
    app, path, _ = APPS[scenario]

    def launch(ctx: Context, port: int, workers: int) -> Launch:
        argv = [
            str(venv_tool(ctx, "hypercorn")), "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--worker-class", "uvloop", "--backlog", "1024",
            "--log-level", "warning", app,
        ]  # fmt: skip
        return Launch(argv, path, _peer_env())

    return launch


GUNICORN_ASGI_WORKER = "gunicorn.workers.gasgi"  # gunicorn's own ASGI worker (`-k asgi`)


def gunicorn_asgi_worker(ctx: Context) -> tuple[str, str]:
    """(worker class, note): gunicorn's own `-k asgi` where the installed gunicorn has it,
    else uvicorn's UvicornWorker, the way gunicorn ran ASGI apps before."""
    if venv_has(ctx, GUNICORN_ASGI_WORKER):
        return "asgi", "gunicorn -k asgi (its own ASGI worker, uvloop)"
    return "uvicorn.workers.UvicornWorker", "gunicorn -k uvicorn.workers.UvicornWorker"


def _gunicorn_asgi_missing(ctx: Context) -> str | None:
    if not venv_has(ctx, "gunicorn"):
        return f"gunicorn not installed in {ctx.venv} ({SETUP_HINT})"
    if venv_has(ctx, GUNICORN_ASGI_WORKER) or venv_has(ctx, "uvicorn.workers"):
        return None
    return "this gunicorn has no -k asgi and uvicorn.workers is not installed"


def _gunicorn_asgi(scenario: str) -> Callable[[Context, int, int], Launch]:
    app, path, _ = APPS[scenario]

    def launch(ctx: Context, port: int, workers: int) -> Launch:
        worker, note = gunicorn_asgi_worker(ctx)
        argv = [
            str(venv_tool(ctx, "gunicorn")), "-k", worker, "-w", str(workers),
            "-b", f"127.0.0.1:{port}", "--backlog", "1024", "--log-level", "warning",
        ]  # fmt: skip
        if worker == "asgi":
            argv += ["--asgi-loop", "uvloop"]
        return Launch([*argv, app], path, _peer_env(), note=note)

    return launch


def _peers_of(scenario: str) -> list[Peer]:
    """forkd first, then the scenario's peers, in the order the report lists them."""
    forkd = Peer("forkd", scenario, _forkd_missing(scenario), _forkd(scenario))
    if scenario == WSGI_HELLO:
        return [
            forkd,
            Peer("gunicorn-sync", scenario, _in_venv("gunicorn"), _gunicorn("sync", scenario)),
            Peer("gunicorn-gthread", scenario, _in_venv("gunicorn"),
                 _gunicorn("gthread", scenario)),
            Peer("granian", scenario, _in_venv("granian"), _granian("wsgi", scenario)),
            Peer("waitress", scenario, _in_venv("waitress"), _waitress(scenario),
                 lambda ctx: 1),
        ]  # fmt: skip
    if scenario in (ASGI_HELLO, ASGI_JSON):
        return [
            forkd,
            Peer("uvicorn", scenario, _in_venv("uvicorn", "uvloop", "httptools"),
                 _uvicorn(scenario)),
            Peer("granian", scenario, _in_venv("granian"), _granian("asgi", scenario)),
            Peer("hypercorn", scenario, _in_venv("hypercorn", "uvloop"), _hypercorn(scenario)),
            Peer("gunicorn-asgi", scenario, _gunicorn_asgi_missing, _gunicorn_asgi(scenario)),
        ]  # fmt: skip
    if scenario == FLASK:
        return [
            forkd,
            Peer("gunicorn-gthread", scenario, _in_venv("gunicorn", "flask"),
                 _gunicorn("gthread", scenario)),
        ]  # fmt: skip
    return [
        forkd,
        Peer("uvicorn", scenario, _in_venv("uvicorn", "fastapi"), _uvicorn(scenario)),
    ]


PEERS: list[Peer] = [peer for scenario in SCENARIOS for peer in _peers_of(scenario)]
