"""How evenly a forkd master's workers share one listening socket under wrk load.

    python scripts/accept_share.py [--workers 2] [--connections 50] [--duration 5]

Starts `forkd start -n hello.tap -w N` on a free 127.0.0.1 port, runs
`wrk -t2 -cC -dDs` against it, then reads each worker's request and connection counters
from `forkctl status --json` (the workers' heartbeats). Prints each worker's share; an even
split is 1/N each. Bounded in time, loopback only, stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from forkd.testing import free_port, wait_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("accept_share: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    env = dict(os.environ, PYTHONPATH=str(REPO))
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="forkd-share-") as directory:
        port = free_port()
        subprocess.run(
            [
                python,
                "-m",
                "forkd.cli.mktap",
                "hello",
                "--port",
                str(port),
                "--interface",
                "127.0.0.1",
            ],
            cwd=directory,
            env=env,
            check=True,
            capture_output=True,
        )
        master = subprocess.Popen(
            [
                python,
                "-m",
                "forkd.cli.forkd",
                "start",
                "-n",
                "hello.tap",
                "-w",
                str(args.workers),
                "-l",
                "share.log",
            ],
            cwd=directory,
            env=env,
        )
        ctl = os.path.join(directory, "hello.ctl")

        def status() -> dict:
            done = subprocess.run(
                [python, "-m", "forkd.cli.forkctl", "-c", ctl, "status", "--json"],
                env=env,
                capture_output=True,
                text=True,
            )
            return json.loads(done.stdout) if done.returncode == 0 else {}

        try:
            wait_for(
                lambda: (
                    len([w for w in status().get("workers", []) if w.get("state") == "ready"])
                    == args.workers
                ),
                20,
            )
            wrk = subprocess.run(
                [
                    "wrk",
                    "-t2",
                    f"-c{args.connections}",
                    f"-d{args.duration}s",
                    f"http://127.0.0.1:{port}/",
                ],
                capture_output=True,
                text=True,
                timeout=args.duration + 30,
            )
            time.sleep(1.5)  # one heartbeat interval: the counters to reach the master
            workers = status()["workers"]
        finally:
            master.send_signal(signal.SIGTERM)
            master.wait(30)
    total = sum(w["requests"] for w in workers) or 1
    print(next(line for line in wrk.stdout.splitlines() if "Requests/sec" in line).strip())
    for w in sorted(workers, key=lambda w: w["number"]):
        print(
            f"worker {w['number']}: {w['requests']:>9} requests "
            f"({100 * w['requests'] / total:5.1f}%), {w['accepted']} connections"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
