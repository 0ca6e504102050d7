"""What a forkd WSGI worker does when every thread of its pool is busy.

    python scripts/wsgi_saturation.py [--workers 1] [--threads 2] [--connections 50]
                                      [--body 0]
    python scripts/wsgi_saturation.py --threads 1 --slow-reader 12582912

Runs `forkd serve forkd.testing.gate:application` on a free 127.0.0.1 port, opens
`--connections` connections that each send `POST /gate` (with `--body` bytes of body), all
held in the application by a forkd.testing.gate.Gate. Once the pool's threads are all held
it prints, per worker: the connections it accepted (psutil), the requests running, its
RSS; then whether a `GET /pid` on a new connection is answered within 2 s while the
workers are saturated, and how long everything takes to be answered once the gate opens.
With `--slow-reader N` it measures instead a client that asks for N bytes (GET /bytes?N)
and reads none of them: whether a GET /pid is answered meanwhile (the slow client holds
no thread), the worker's RSS growth, and that the N bytes then arrive whole.
Bounded in time, loopback only, stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from forkd.testing import forkd_command, forkd_env, free_port, wait_for  # noqa: E402
from forkd.testing.gate import Gate, socket_path  # noqa: E402


def workers_of(master: psutil.Process) -> list[psutil.Process]:
    return [c for c in master.children() if "forkd: worker" in " ".join(c.cmdline())]


def accepted(worker: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in worker.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    return bytes(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--body", type=int, default=0, help="request body bytes")
    parser.add_argument("--slow-reader", type=int, default=0, metavar="N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forkd-sat-") as directory:
        port = free_port()
        gate = Gate(socket_path(directory))
        env = dict(forkd_env(), FORKD_GATE=gate.path)
        argv = forkd_command(
            "serve", "forkd.testing.gate:application", "--bind", f"127.0.0.1:{port}",
            "-w", str(args.workers), "--threads", str(args.threads),
        )  # fmt: skip
        master = subprocess.Popen(
            argv, cwd=directory, env=env, stderr=subprocess.DEVNULL, start_new_session=True
        )
        socks: list[socket.socket] = []
        try:
            probe = wait_for(lambda: _answer(port, b"/pid"), 30, message="forkd serve")
            assert probe.startswith(b"HTTP/1.1 200")
            process = psutil.Process(master.pid)
            workers = wait_for(
                lambda: len(workers_of(process)) == args.workers and workers_of(process)
            )
            base = {w.pid: w.memory_info().rss for w in workers}
            if args.slow_reader:
                slow_reader(port, args.slow_reader, workers[0])
                return 0
            head = b"POST /gate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            head += b"Content-Length: %d\r\n\r\n" % args.body
            for _ in range(args.connections):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):  # what the kernel takes; no more
                    sock.send(head + b"b" * args.body)
                sock.setblocking(True)
                socks.append(sock)
            running = min(args.connections, args.workers * args.threads)
            gate.wait_held(running, 30)
            # let the workers take what they will: until their count stops changing for 1 s
            last, since = None, time.monotonic()
            while time.monotonic() - since < 1.0:
                now = [accepted(w, port) for w in workers]
                if now != last:
                    last, since = now, time.monotonic()
                time.sleep(0.05)
            held = gate.held()
            for w in workers:
                print(
                    f"worker {w.pid}: accepted {accepted(w, port)} of {args.connections}, "
                    f"running {held.count(w.pid)}, RSS {w.memory_info().rss / 2**20:.1f} MiB "
                    f"(+{(w.memory_info().rss - base[w.pid]) / 2**20:.1f})"
                )
            started = time.monotonic()
            answer = _answer(port, b"/pid", timeout=2.0)
            print(
                "GET /pid while saturated:",
                f"answered in {time.monotonic() - started:.2f}s" if answer else "not in 2 s",
            )
            gate.open()
            started = time.monotonic()
            answered = 0
            for sock in socks:
                if read_all(sock).startswith(b"HTTP/1.1 200"):
                    answered += 1
            print(
                f"after the gate opened: {answered}/{len(socks)} answered 200 "
                f"in {time.monotonic() - started:.2f}s"
            )
        finally:
            for sock in socks:
                sock.close()
            os.killpg(master.pid, signal.SIGTERM)
            try:
                master.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(master.pid, signal.SIGKILL)
            gate.close()
    return 0


def slow_reader(port: int, size: int, worker: psutil.Process) -> None:
    rss = worker.memory_info().rss
    with socket.socket() as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(30)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /bytes?%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
        started = time.monotonic()
        answer = _answer(port, b"/pid", timeout=5.0)
        waited = time.monotonic() - started
        print(
            f"GET /pid while a client reads {size} bytes at a crawl:",
            f"answered in {waited:.2f}s" if answer else "not in 5 s",
        )
        print(f"worker RSS +{(worker.memory_info().rss - rss) / 2**20:.1f} MiB")
        got = len(read_all(slow))
    print(f"the slow client then got {got} bytes (head included)")


def _answer(port: int, path: bytes, timeout: float = 5.0) -> bytes | None:
    """The response to GET `path` on a new connection, or None within `timeout`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
            return read_all(sock) or None
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
