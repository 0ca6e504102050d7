"""Measure forkd.web's server CPU per request: serve_site.py under wrk, CPU from psutil.

    python scripts/measure_site.py hello            # wrk -t1 -c50 -d5s, one uvloop process

Prints requests/s and the server's CPU microseconds per request (user + system time of the
server process over the run / requests wrk completed): steadier than req/s on a small box.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

import psutil

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["hello", "static"], nargs="?", default="hello")
    parser.add_argument("--path", default=".")
    parser.add_argument("--url-path", default="/")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--loop", default="uvloop")
    args = parser.parse_args()
    server = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "serve_site.py"),
            args.kind,
            "--port",
            "0",
            "--path",
            args.path,
            "--loop",
            args.loop,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[-1])
        proc = psutil.Process(server.pid)
        url = f"http://127.0.0.1:{port}{args.url_path}"
        subprocess.run(["wrk", "-t1", "-c10", "-d1s", url], capture_output=True, check=True)
        before = proc.cpu_times()
        out = subprocess.run(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        after = proc.cpu_times()
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        cpu = (after.user - before.user) + (after.system - before.system)
        print(out)
        print(
            f"{args.kind}: {rps:.0f} req/s, server CPU {cpu * 1e6 / requests:.2f} us/request "
            f"(user {(after.user - before.user) * 1e6 / requests:.2f}, "
            f"system {(after.system - before.system) * 1e6 / requests:.2f})"
        )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
