"""Benchmark forkd's HTTP server against its peers, side by side, in one run.

    bash scripts/bench_setup.sh                      # once: the peers' venv, wrk, nginx
    python scripts/bench_http.py                     # hello + static, -w1 and -w2, 5 s each
    python scripts/bench_http.py --only forkd,uvicorn --workers 2 --duration 10 --rounds 3
    python scripts/bench_http.py --json results.json --profile 10
    python scripts/bench_http.py --suite hosting --rounds 3 --docs   # forkd serve vs
        # gunicorn, uvicorn, granian, hypercorn, waitress; tables into docs/BENCHMARKS.md

Two suites (benchkit/suites.py): `http`, forkd.web's own server (the hello and static
taps) against uvicorn, granian, gunicorn, nginx, Twisted and raw uvloop; `hosting`,
`forkd serve MODULE:APP` hosting WSGI, ASGI, Flask and FastAPI apps against the servers
people host them with (benchkit/hosting.py).

Every server runs on 127.0.0.1 on a free port, in its own process group, one at a time:
start, wait until `GET` answers 200 (with a deadline), warm up 1 s, then
`wrk -t1 -c50 -dNs --latency` while the server's whole process tree's CPU time (user+sys,
psutil) is read before and after, giving server CPU microseconds per request -- steadier
than requests/s on a 2-core machine where wrk shares the cores. Every server is killed
(its process group) when its measurement ends, whatever happens. A server that is not
installed, cannot run that many workers, or fails to start is skipped with a note.

`--profile SECONDS` then runs py-spy on forkd's workers under wrk load, in the suite's
profiled scenarios (http: hello; hosting: wsgi-hello and asgi-hello), and prints where
the time goes (top frames). `--docs` writes the results into the suite's marked section of
docs/BENCHMARKS.md (benchkit/docs.py). Exit status: 0 when the run completed (targets missed or
not), 1 when forkd itself could not be measured, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchkit import docs, facts, peers, processes, profile, report, suites, wrk
from benchkit.report import Measurement
from benchkit.suites import Suite

STARTUP_TIMEOUT = 20.0
DOCS = peers.REPO / "docs" / "BENCHMARKS.md"


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_workers(text: str) -> list[int]:
    try:
        counts = [int(item) for item in parse_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of worker counts: {text!r}") from None
    if not counts or any(n < 1 or n > 64 for n in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be 1..64: {text!r}")
    return counts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_http.py",
        description="forkd vs uvicorn, granian, gunicorn, nginx, Twisted, raw uvloop (wrk); "
        "--suite hosting: forkd serve vs gunicorn, uvicorn, granian, hypercorn, waitress.",
    )
    p.add_argument(
        "--suite", choices=sorted(suites.SUITES), default="http", help="http (default), hosting"
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per server")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk before measuring")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument(
        "--workers", type=parse_workers, default=[1, 2], help="worker counts, e.g. 1,2 (default)"
    )
    servers = sorted({s for suite in suites.SUITES.values() for s in suite.servers})
    p.add_argument(
        "--only", type=parse_list, default=None, help=f"servers to run: {','.join(servers)}"
    )
    scenarios = "; ".join(f"{n}: {','.join(s.scenarios)}" for n, s in suites.SUITES.items())
    p.add_argument(
        "--scenarios", type=parse_list, default=None, help=f"default all the suite's ({scenarios})"
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat all; report the median round")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="then py-spy forkd's workers under wrk load for SECONDS (each profiled scenario)",
    )
    p.add_argument(
        "--profile-native",
        action="store_true",
        help="profile with C frames too (py-spy --native: shows the cycle collector's share)",
    )
    p.add_argument("--venv", type=Path, default=peers.BENCH_VENV, help="the peers' virtualenv")
    p.add_argument(
        "--docs",
        type=Path,
        nargs="?",
        const=DOCS,
        default=None,
        metavar="FILE",
        help="write the results into FILE's marked section (default docs/BENCHMARKS.md)",
    )
    return p


def measure(
    peer: peers.Peer, ctx: peers.Context, workers: int, args: argparse.Namespace, round_: int
) -> Measurement:
    """Start `peer` with `workers` workers, load it with wrk, stop it; never raises for
    a server that misbehaves (the failure becomes `skipped`)."""
    result = Measurement(peer.server, peer.scenario, workers, round_)
    try:
        reason = peer.missing(ctx)
    except RuntimeError as error:  # the check itself failed (benchkit.peers.venv_has)
        result.skipped = f"failed: {error}"
        return result
    if reason is None and workers > peer.max_workers(ctx):
        reason = f"runs {peer.max_workers(ctx)} worker(s) only"
    if reason is not None:
        result.skipped = reason
        return result
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    try:
        launch = peer.launch(ctx, port, workers)
        result.note = launch.note
        env = {**os.environ, **launch.env}
        url = f"http://127.0.0.1:{port}{launch.path}"
        with processes.Server(launch.argv, ctx.workdir, env) as server:
            server.wait_until_serving(port, launch.path, STARTUP_TIMEOUT)
            if args.warmup > 0:
                wrk.run(url, args.warmup, args.connections)
            before = server.cpu_seconds()
            measured = wrk.run(url, args.duration, args.connections)
            after = server.cpu_seconds()
    except (processes.ServerFailed, wrk.WrkError, RuntimeError, OSError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        last = f" ... {lines[-1].strip()}" if len(lines) > 1 else ""
        result.skipped = f"failed: {lines[0]}{last}"
        return result
    result.requests_per_second = measured.requests_per_second
    result.requests = measured.requests
    result.p50, result.p99 = measured.p50, measured.p99
    result.socket_errors, result.non_2xx = measured.socket_errors, measured.non_2xx
    user, system = processes.cpu_delta(before, after)
    result.cpu_seconds, result.cpu_user_seconds = user + system, user
    result.processes = len(after)
    result.bytes_per_request = round(measured.bytes_read / measured.requests, 1)
    return result


def run_all(
    suite: Suite, args: argparse.Namespace, scratch: Path, static_dir: Path
) -> list[Measurement]:
    selected = suite.select(args.only, args.scenarios)
    measurements = []
    for round_ in range(args.rounds):
        for workers in args.workers:
            for peer in selected:
                workdir = scratch / f"{peer.server}-{peer.scenario}-w{workers}-r{round_}"
                ctx = peers.Context(workdir, static_dir, args.venv)
                m = measure(peer, ctx, workers, args, round_)
                measurements.append(m)
                print(progress_line(m), file=sys.stderr, flush=True)
    return measurements


def progress_line(m: Measurement) -> str:
    where = f"{m.server:<16} {m.scenario:<10} -w{m.workers} r{m.round}"
    if not m.ok:
        return f"  {where}  skipped: {m.skipped}"
    return (
        f"  {where}  {m.requests_per_second:>10,.0f} req/s  "
        f"{m.cpu_us_per_request:7.1f} us CPU/req ({m.cpu_user_us_per_request:.1f} user)  "
        f"p99 {m.p99 * 1e3:.2f} ms"
    )


def run_profiles(
    suite: Suite, args: argparse.Namespace, scratch: Path, static_dir: Path
) -> list[str]:
    """py-spy forkd in each of the suite's profiled scenarios that this run measured."""
    lines: list[str] = []
    for scenario in suite.profiled:
        peer = suite.forkd_peer(scenario)
        if peer is not None and scenario in args.scenarios:
            lines += run_profile(peer, args, scratch / f"profile-{scenario}", static_dir)
    return lines


def run_profile(
    peer: peers.Peer, args: argparse.Namespace, workdir: Path, static_dir: Path
) -> list[str]:
    """py-spy forkd's server in `peer`'s scenario (the largest worker count asked) under
    wrk load."""
    py_spy = args.venv / "bin" / "py-spy"
    if not py_spy.exists():
        return [f"profile skipped: py-spy not in {args.venv} (scripts/bench_setup.sh)"]
    ctx = peers.Context(workdir, static_dir, args.venv)
    if (reason := peer.missing(ctx)) is not None:
        return [f"profile skipped: {reason}"]
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    workers = min(max(args.workers), peer.max_workers(ctx))
    port = processes.free_port()
    launch = peer.launch(ctx, port, workers)
    output = ctx.workdir / "py-spy.txt"
    url = f"http://127.0.0.1:{port}{launch.path}"
    with processes.Server(launch.argv, ctx.workdir, {**os.environ, **launch.env}) as server:
        server.wait_until_serving(port, launch.path, STARTUP_TIMEOUT)
        wrk.run(url, 1.0, args.connections)
        spy = profile.record(py_spy, server.pid, args.profile, output, args.profile_native)
        try:
            wrk.run(url, args.profile + 1, args.connections)
            _, err = spy.communicate(timeout=args.profile + 30)
        finally:
            processes.stop_group(spy)
    if not output.exists():
        return [f"profile failed: {err.decode(errors='replace').strip()[:300]}"]
    summary = profile.summarise(output.read_text(errors="replace"))
    head = f"forkd {peer.scenario} -w{workers} under wrk -c{args.connections}, {args.profile}s"
    if args.profile_native:
        head += ", with C frames (--native)"
    return [head + (f" ({launch.note})" if launch.note else ""), *summary.lines()]


def venv_setting(venv: Path) -> list[str]:
    """`FORKD_BENCH_VENV=...` for the recorded command when the peers' venv came from it,
    so that the command in the docs finds the same peers when run again."""
    named = os.environ.get("FORKD_BENCH_VENV")
    return [f"FORKD_BENCH_VENV={named}"] if named and Path(named) == venv else []


def busy_warning(load: float, cpus: int | None) -> str | None:
    """A warning when other work competes for the CPUs: ratios then carry its noise."""
    if load > 0.5 * (cpus or 1):
        return (
            f"warning: load average {load:.2f} on {cpus} CPUs before the run: other work "
            "competes with the servers; prefer CPU us/req and more --rounds"
        )
    return None


def usage_error(args: argparse.Namespace, suite: Suite) -> str | None:
    """What is wrong with the options for this suite, in one line (None when nothing)."""
    unknown = sorted(set(args.scenarios) - set(suite.scenarios))
    if unknown:
        return (
            f"unknown scenario(s) for --suite {suite.name}: {', '.join(unknown)} "
            f"(known: {', '.join(suite.scenarios)})"
        )
    if args.duration < 1 or args.rounds < 1 or args.connections < 1:
        return "bad duration (>= 1 s), rounds or connections"
    try:
        suite.select(args.only, args.scenarios)
    except ValueError as error:
        return str(error)
    if args.docs is not None:
        try:
            docs.replace_section(args.docs.read_text(), suite.name, "")
        except (OSError, ValueError) as error:
            return f"--docs {args.docs}: {error}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    suite = suites.SUITES[args.suite]
    if args.scenarios is None:
        args.scenarios = suite.scenarios
    problem = usage_error(args, suite)
    if problem is not None:
        print(f"bench_http.py: {problem}", file=sys.stderr)
        return 2
    if not wrk.available():
        print("bench_http.py: wrk not found (run scripts/bench_setup.sh)", file=sys.stderr)
        return 1
    started = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    before_run = facts.machine()
    warning = busy_warning(before_run["load_average_1min"], before_run["cpus"])
    if warning:
        print(warning, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="forkd-bench-") as tmp:
        scratch = Path(tmp)
        static_dir = scratch / "static"
        peers.make_static_file(static_dir)
        measurements = run_all(suite, args, scratch, static_dir)
        results = report.median_rounds(measurements)
        profile_lines = run_profiles(suite, args, scratch, static_dir) if args.profile else []
    print(report.table(results, suite.scenarios))
    for scenario, reason in suite.pending.items():
        print(f"{scenario}: {reason}")
    targets = report.target_lines(results, suite.targets)
    for line in targets:
        print(line)
    for line in profile_lines:
        print(line)
    if warning:
        print(warning)
    document = {
        "command": [
            *venv_setting(args.venv),
            "python3",
            "scripts/bench_http.py",
            *(sys.argv[1:] if argv is None else argv),
        ],
        "warning": warning,
        "suite": suite.name,
        "date": date,
        "run": {"duration": args.duration, "warmup": args.warmup, "rounds": args.rounds},
        "wrk": wrk.command("http://127.0.0.1:PORT/", args.duration, args.connections),
        "machine": before_run,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "uptime_after": facts.uptime(),
        "versions": facts.versions(
            args.venv, peers.REPO, suite.venv_packages, suite.forkd_packages
        ),
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "results": [m.as_dict() for m in results],
        "rounds": [m.as_dict() for m in measurements],
        "targets": targets,
        "profile": profile_lines,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.docs is not None:
        body = docs.section(document, results, suite.scenarios, suite.pending)
        docs.write(args.docs, suite.name, body)
        print(f"wrote the {suite.name} results into {args.docs}", file=sys.stderr)
    forkd_ran = any(m.server == report.FORKD and m.ok for m in results)
    forkd_asked = args.only is None or report.FORKD in args.only
    return 1 if forkd_asked and not forkd_ran else 0


if __name__ == "__main__":
    sys.exit(main())
