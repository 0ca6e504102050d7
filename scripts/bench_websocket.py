"""WebSocket echo, messages per second: `forkd serve` vs uvicorn, side by side in one run.

    FORKD_BENCH_VENV=/work/peers-venv python3 scripts/bench_websocket.py [--seconds 5]

Both serve scripts/peers/asgi_ws_echo.py with 1 worker on 127.0.0.1. The load is a separate
process (the same for both: the `websockets` asyncio client) with N connections, each
sending a 64-byte text message and waiting for its echo, for D seconds. Server CPU is the
server's process tree's user+system time over the run (psutil), so the table also gives CPU
microseconds per message; wrk speaks no WebSocket, hence this script beside bench_http.py.
uvicorn runs with its default WebSocket implementation (websockets) and with wsproto.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "scripts" / "peers"
VENV = Path(os.environ.get("FORKD_BENCH_VENV") or REPO / ".bench-venv")

LOAD = textwrap.dedent(
    """
    import asyncio, sys, time
    from websockets.asyncio.client import connect

    async def client(url, until, counts):
        async with connect(url, compression=None, max_size=None) as ws:
            message = "x" * 64
            while time.monotonic() < until:
                await ws.send(message)
                await ws.recv()
                counts[0] += 1

    async def main(url, connections, seconds):
        counts = [0]
        until = time.monotonic() + seconds
        await asyncio.gather(*(client(url, until, counts) for _ in range(connections)))
        print(counts[0])

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """User plus system time of `pid` and its children (the workers)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


@contextlib.contextmanager
def serving(command: list[str], port: int, cwd: Path) -> Iterator[int]:
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port)
        time.sleep(1.0)  # the workers past their boot (forkd's master listens first)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_load(python: str, port: int, connections: int, seconds: float) -> int:
    done = subprocess.run(
        [python, "-c", LOAD, f"ws://127.0.0.1:{port}/", str(connections), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    return int(done.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    peer_python = str(VENV / "bin" / "python")
    if not Path(peer_python).exists():
        print(f"no peers' venv at {VENV}: run scripts/bench_setup.sh", file=sys.stderr)
        return 1
    servers = {
        "forkd": lambda port: [
            sys.executable,
            *("-m", "forkd.cli.forkd", "serve", "asgi_ws_echo:app", "-w", "1"),
            *("--bind", f"127.0.0.1:{port}", "--tap", f"/tmp/forkd-ws-bench-{port}.tap"),
            *("--ws-per-message-deflate", "false"),
        ],
        "uvicorn (websockets)": lambda port: [
            peer_python,
            *("-m", "uvicorn", "asgi_ws_echo:app", "--port", str(port), "--log-level", "error"),
            *("--ws", "websockets", "--ws-per-message-deflate", "false"),
        ],
        "uvicorn (wsproto)": lambda port: [
            peer_python,
            *("-m", "uvicorn", "asgi_ws_echo:app", "--port", str(port), "--log-level", "error"),
            *("--ws", "wsproto", "--ws-per-message-deflate", "false"),
        ],
    }
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| server | messages/s | server CPU us/message | forkd/this |")
    print("|---|---|---|---|")
    forkd_rate = None
    for name, command in servers.items():
        port = free_port()
        with serving(command(port), port, PEERS) as pid:
            before = cpu_seconds(pid)
            messages = run_load(peer_python, port, args.connections, args.seconds)
            used = cpu_seconds(pid) - before
        rate = messages / args.seconds
        forkd_rate = rate if forkd_rate is None else forkd_rate
        ratio = "" if name == "forkd" else f"{forkd_rate / rate:.2f}x"
        cpu = used / messages * 1e6 if messages else float("nan")
        print(f"| {name} | {rate:,.0f} | {cpu:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
