"""forkd.web.wsgi's bounded pool and loop-side output, end to end.

In-process (a Site on a loopback port): a slow-reading client holds no thread, only a
response over `spoolSize` waits for its client, and a client that stops reading is cut
and frees its thread. With a real `forkd serve` of forkd.testing.gate:application, whose
`/gate` requests block until the test's Gate lets them on: a saturated worker leaves new
connections in the kernel's listen queue (forkd.testing.accept_queue) and answers every
one once released, its memory does not grow with a flood, and with two workers the free
one answers while the other is saturated.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from forkd.protocol import stats
from forkd.testing import accept_queue, forkctl, forkd_env, free_port, wait_for
from forkd.testing.gate import Gate, socket_path
from forkd.web import server, wsgi
from forkd.web.handoff import Handoff
from forkd.web.wsgi import BodyInput, WSGIResource
from tests.webserving import ResponseReader, connect, forkd_serve, get, serving

MiB = 1 << 20


def pieces_app(
    size: int, produced: list[int] | None = None
) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """/big answers `size` bytes in 64 KiB pieces (new objects, as a real body's are;
    `produced` counts them); anything else a short "small"."""

    def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] != "/big":
            start_response("200 OK", [("Content-Length", "5")])
            return [b"small"]
        start_response("200 OK", [("Content-Length", str(size))])

        def body() -> Iterator[bytes]:
            for n in range(size // 65536):
                if produced is not None:
                    produced.append(n)
                yield bytes([97 + n % 26]) * 65536

        return body()

    return application


def expected_big(size: int) -> bytes:
    return b"".join(bytes([97 + n % 26]) * 65536 for n in range(size // 65536))


def slow_client(port: int) -> socket.socket:
    """Asks for /big and reads nothing (a receive buffer as small as the kernel allows)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def read_big(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of a Content-Length response, read into one growing buffer (the
    ResponseReader's bytes += would take minutes over a 4 KiB receive buffer)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = bytearray(rest)
    while len(body) < length and (chunk := sock.recv(1 << 20)):
        body += chunk
    return head, bytes(body)


def small_request(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return sock


def test_a_slow_reader_of_a_large_response_holds_no_thread() -> None:
    """One thread: while a client takes its 4 MiB response at a crawl, the next request
    gets the thread at once; the slow client then gets every byte, in order."""
    size = 4 * MiB
    with serving(server.Site(WSGIResource(pieces_app(size), threads=1))) as served:
        slow = slow_client(served.port)
        with small_request(served.port) as other:
            assert ResponseReader(other).read().body == b"small"
        head, body = read_big(slow)
        slow.close()
    assert head.startswith(b"HTTP/1.1 200") and body == expected_big(size)


def test_only_a_response_over_the_spool_waits_for_its_client(monkeypatch: Any) -> None:
    """spoolSize is the bound: past it the thread waits (the next request waits in the
    line), and goes on as soon as the client reads."""
    outputs: list[Handoff] = []

    class Recorded(Handoff):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            outputs.append(self)

    monkeypatch.setattr(wsgi, "Handoff", Recorded)
    size = 32 * MiB
    resource = WSGIResource(pieces_app(size), threads=1)
    resource.bufferSize, resource.spoolSize = 64 * 1024, 256 * 1024
    with serving(server.Site(resource)) as served:
        slow = slow_client(served.port)
        other = small_request(served.port)

        def held() -> bool:
            load = served.call(lambda: resource.pool.load)
            return bool(outputs) and outputs[0].threadWaiting and load == 2

        wait_for(held, 10, message="the big response to hold its thread, the small to wait")
        _, body = read_big(slow)  # the client reads: the thread goes on
        assert ResponseReader(other).read().body == b"small"
        slow.close()
        other.close()
    assert body == expected_big(size)


def test_a_client_that_stops_reading_is_cut_and_its_thread_freed() -> None:
    size = 64 * MiB
    produced: list[int] = []
    resource = WSGIResource(pieces_app(size, produced), threads=1)
    resource.bufferSize, resource.spoolSize = 64 * 1024, 256 * 1024
    site = server.Site(resource)
    site.sendTimeout = 0.5
    with serving(site) as served:
        slow = slow_client(served.port)
        with small_request(served.port) as other:
            assert ResponseReader(other).read().body == b"small"  # after the cut
        slow.close()
    assert len(produced) < size // 65536, "the application stopped producing for nobody"


class FakeRequest:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseBody(self) -> None:
        self.calls.append("pause")

    def resumeBody(self) -> None:
        self.calls.append("resume")


def test_a_body_waiting_for_a_thread_is_not_read_until_admitted() -> None:
    request = FakeRequest()
    body = BodyInput(request, loop=None, limit=10)
    body.hold()
    body.feed(b"abc")
    assert request.calls == ["pause"]
    body.admit()
    assert request.calls == ["pause", "resume"]
    held_over = FakeRequest()
    body = BodyInput(held_over, loop=None, limit=10)
    body.hold()
    body.feed(b"x" * 20)  # more than the limit came with the headers: stays paused
    body.admit()
    assert held_over.calls == ["pause"]
    whole = FakeRequest()
    body = BodyInput(whole, loop=None, limit=10)
    body.feed(b"abc")
    body.end()
    body.hold()  # nothing more of it to hold back: the client stays read
    body.admit()
    assert whole.calls == []


def test_a_waiting_request_whose_client_leaves_never_runs() -> None:
    release = threading.Event()
    ran: list[str] = []

    def application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ran.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/block":
            release.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    resource = WSGIResource(application, threads=1)
    with serving(server.Site(resource)) as served:
        blocking = connect(served.port)
        blocking.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: ran == ["/block"], 10, message="the thread to be taken")
        leaving = connect(served.port)
        leaving.sendall(b"GET /left HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: served.call(lambda: resource.pool.load) == 2, 10, message="waiting")
        leaving.close()

        def open_here() -> int:
            return sum(1 for protocol in stats.open if protocol.factory is served.site)

        wait_for(lambda: served.call(open_here) == 1, 10, message="the client to be gone")
        release.set()
        assert ResponseReader(blocking).read().body == b"ok"
        blocking.close()
        assert get(served.port, b"/after").body == b"ok"
    assert ran == ["/block", "/after"], "the request whose client left was never run"


def test_an_answer_before_the_body_is_read_is_not_reset() -> None:
    """The application answers a large upload without reading it: the connection closes
    after the answer lingering (reading and dropping the rest of the body), because
    closing a socket with unread input makes the kernel reset it, and the reset throws
    away the end of the answer that is still on its way."""
    answer = bytes(range(256)) * 8192  # 2 MiB: its end is still queued when we close

    def refuse(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("413 Content Too Large", [("Content-Length", str(len(answer)))])
        return [answer]

    site = server.Site(WSGIResource(refuse, threads=1))
    site.maxBodySize = 64 * MiB
    with serving(site) as served:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", served.port))
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (8 * MiB))
        sock.sendall(b"u" * MiB)  # a part of it, not read by the application
        sock.shutdown(socket.SHUT_WR)  # and the client gives up sending
        head, body = read_big(sock)
        sock.close()
    assert head.startswith(b"HTTP/1.1 413") and body == answer


# -- a real forkd serve ----------------------------------------------------------------------
APP = "forkd.testing.gate:application"


@pytest.fixture
def gate(tmp_path: Any) -> Iterator[Gate]:
    with Gate(socket_path(tmp_path)) as opened:
        yield opened


@contextlib.contextmanager
def serve(tmp_path: Any, gate: Gate, port: int, workers: int, threads: int) -> Iterator[Any]:
    """`forkd serve` of the gate application; the gate opens before it is stopped (a
    failed test leaves nothing held, so the drain takes no graceful timeout)."""
    env = dict(forkd_env(), FORKD_GATE=gate.path)
    with forkd_serve(
        tmp_path, APP, "--bind", f"127.0.0.1:{port}",
        "-w", str(workers), "--threads", str(threads), env=env,
    ) as process:  # fmt: skip
        try:
            yield process
        finally:
            gate.open()


def workers_of(process: Any, count: int) -> list[int]:
    import psutil

    def found() -> list[int]:
        children = psutil.Process(process.pid).children()
        pids = [c.pid for c in children if "forkd: worker" in " ".join(c.cmdline())]
        return sorted(pids) if len(pids) == count else []

    return list(wait_for(found, 30, message=f"{count} workers serving"))


def answered(port: int) -> bool:
    try:
        return get(port, b"/pid").status == 200
    except OSError:
        return False


def requests_of(tmp_path: Any, pid: int) -> int:
    """The worker's request counter, as its last heartbeat told the master."""
    status = forkctl(str(tmp_path / "gate.ctl"), "status", "--json")
    for worker in json.loads(status.stdout)["workers"]:
        if worker["pid"] == pid:
            return int(worker["requests"])
    return -1


def wait_requests(tmp_path: Any, pid: int, count: int) -> None:
    """Wait until the worker has read `count` requests (and so counted them in its pool)."""
    wait_for(
        lambda: requests_of(tmp_path, pid) >= count,
        20,
        interval=0.3,
        message=lambda: f"worker {pid} to read {count} requests: {requests_of(tmp_path, pid)}",
    )


def established(pid: int, port: int) -> int:
    import psutil

    return sum(
        1
        for c in psutil.Process(pid).net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def send_gated(port: int, body: int = 0) -> socket.socket:
    """POST /gate with `body` bytes: as much as the kernel takes now (the rest is never
    needed: the application does not read it)."""
    sock = connect(port, timeout=30)
    head = b"POST /gate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        sock.send(head % body + b"b" * body)
    sock.settimeout(30)
    return sock


def read_all(socks: list[socket.socket]) -> list[bytes]:
    bodies = []
    for sock in socks:
        response = ResponseReader(sock).read()
        assert response.status == 200, response
        bodies.append(response.body)
        sock.close()
    return bodies


@pytest.mark.e2e
def test_a_saturated_worker_leaves_connections_queued_and_answers_them_all(
    tmp_path: Any, gate: Gate
) -> None:
    """One worker, two threads (and two places in its line): four requests saturate it.
    A flood of 150 connections with 128 KiB bodies then stays in the kernel's listen
    queue, not in the worker (its memory does not move); released, every request is
    answered."""
    import psutil

    port = free_port()
    with serve(tmp_path, gate, port, workers=1, threads=2) as process:
        [worker] = workers_of(process, 1)
        wait_for(lambda: answered(port), 30, message="forkd serve to answer")
        base = requests_of(tmp_path, worker)
        rss = psutil.Process(worker).memory_info().rss
        first = [send_gated(port) for _ in range(4)]
        assert gate.wait_held(2) == [worker, worker]
        wait_requests(tmp_path, worker, base + 4)  # two running, two waiting: full
        flood = [send_gated(port, body=128 * 1024) for _ in range(150)]
        wait_for(
            lambda: accept_queue(port) == 150,
            20,
            message=lambda: f"the flood in the listen queue: {accept_queue(port)}",
        )
        assert established(worker, port) == 4
        grown = psutil.Process(worker).memory_info().rss - rss
        assert grown < 4 * MiB, f"the worker grew {grown / MiB:.1f} MiB with the flood"
        gate.open()
        bodies = read_all(first + flood)
    assert bodies == [b"%d" % worker] * 154, "every request answered, none lost"


@pytest.mark.e2e
def test_the_free_worker_answers_while_the_other_is_saturated(tmp_path: Any, gate: Gate) -> None:
    port = free_port()
    with serve(tmp_path, gate, port, workers=2, threads=2) as process:
        pids = workers_of(process, 2)
        wait_for(lambda: answered(port), 30, message="forkd serve to answer")
        # keep-alive connections, each answered by the worker that accepted it
        pinned: dict[int, list[tuple[socket.socket, ResponseReader]]] = {p: [] for p in pids}
        while max(len(held) for held in pinned.values()) < 4:
            sock = connect(port)
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            reader = ResponseReader(sock)
            pinned[int(reader.read().body)].append((sock, reader))
            assert sum(map(len, pinned.values())) < 40, "the kernel never chose one worker"
        busy = max(pinned, key=lambda p: len(pinned[p]))
        [free] = [p for p in pids if p != busy]
        base = requests_of(tmp_path, busy)
        for sock, _ in pinned[busy][:4]:
            sock.sendall(b"GET /gate HTTP/1.1\r\nHost: x\r\n\r\n")
        assert gate.wait_held(2) == [busy, busy]
        wait_requests(tmp_path, busy, base + 4)
        for _ in range(10):  # new connections: only the free worker accepts them
            assert get(port, b"/pid").body == b"%d" % free
        gate.open()
        for _sock, reader in pinned[busy][:4]:
            assert reader.read().body == b"%d" % busy
        for held in pinned.values():
            for sock, _ in held:
                sock.close()


@pytest.mark.e2e
def test_a_slow_reader_holds_no_thread_of_a_worker(tmp_path: Any, gate: Gate) -> None:
    """One worker, one thread: a client that reads a 12 MiB response at a crawl leaves
    the thread to the next request, and the worker's memory to its spool."""
    import psutil

    size = 12 * MiB
    port = free_port()
    with serve(tmp_path, gate, port, workers=1, threads=1) as process:
        [worker] = workers_of(process, 1)
        wait_for(lambda: answered(port), 30, message="forkd serve to answer")
        rss = psutil.Process(worker).memory_info().rss
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(30)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /bytes?%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        assert get(port, b"/pid").body == b"%d" % worker
        grown = psutil.Process(worker).memory_info().rss - rss
        _, body = read_big(slow)
        slow.close()
    assert body == b"x" * size
    assert grown < 4 * MiB, f"the worker grew {grown / MiB:.1f} MiB for a slow client"


def test_gate_releases_in_order_and_on_close(tmp_path: Any) -> None:
    """The Gate itself: what it holds, released oldest first, and all when closed."""
    with Gate(socket_path(tmp_path)) as gate:
        os.environ["FORKD_GATE"] = gate.path
        try:
            from forkd.testing.gate import _wait_at_gate

            threads = [threading.Thread(target=_wait_at_gate) for _ in range(3)]
            for thread in threads:
                thread.start()
            assert gate.wait_held(3) == [os.getpid()] * 3
            gate.release(1)
            wait_for(lambda: len(gate.held()) == 2, 5, message="one released")
        finally:
            del os.environ["FORKD_GATE"]
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
