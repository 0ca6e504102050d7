"""End-to-end: hostile telnet clients against a real `forkd start -n` master. The telnet
shell is served in the master's own single-threaded loop, so no client may stall it or
make it grow without bound; the control socket must keep answering."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from forkd.app import Application
from forkd.control.client import request
from forkd.ports import TCPPort
from forkd.testing import RunningForkd, free_port, wait_for
from workers.echo import EchoFactory
from workers.telnet import ShellFactory, hash_password

pytestmark = pytest.mark.timeout(60)
PASSWORD = "open-sesame"


@pytest.fixture
def site(tmp_path: pathlib.Path) -> Iterator[dict[str, Any]]:
    """A tap with an echo port (for the workers) and a telnet port, forkd running it."""
    app = Application("app")
    app.addPort(TCPPort(free_port(), EchoFactory(), interface="127.0.0.1"))
    telnet = free_port()
    app.addPort(
        TCPPort(telnet, ShellFactory("admin", hash_password(PASSWORD)), interface="127.0.0.1")
    )
    app.tapfile = str(tmp_path / "app.tap")
    app.save()
    with RunningForkd(app.tapfile, workers=1) as forkd:
        yield {"forkd": forkd, "telnet": telnet, "ctl": str(tmp_path / "app.ctl")}


def status_time(ctl: str) -> float:
    """Seconds the master takes to answer `status` (AssertionError if not within 1 s)."""
    started = time.monotonic()
    answer = request(ctl, "status", timeout=1.0)
    assert answer["pid"], answer
    return time.monotonic() - started


def read_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    """Read until `marker` arrives (AssertionError on EOF or past `limit` bytes)."""
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, data[-500:]
        data += chunk
        assert len(data) < limit, data[-500:]
    return data


def login(port: int, rcvbuf: int = 0) -> socket.socket:
    """A logged-in telnet connection (with a small receive buffer if `rcvbuf`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"admin\r\n{PASSWORD}\r\n".encode())
    read_until(sock, b">>> ")
    return sock


def rss(pid: int) -> int:
    """The master's resident memory, to show a stalled client costs it little."""
    return int(psutil.Process(pid).memory_info().rss)


def test_a_client_that_never_reads_a_huge_output_costs_bounded_memory(site: dict[str, Any]) -> None:
    forkd = site["forkd"]
    before = rss(forkd.pid)
    sock = login(site["telnet"], rcvbuf=4096)
    with sock:
        sock.sendall(b"for i in range(20): print('x' * 1_000_000)\r\n")
        for _ in range(5):
            status_time(site["ctl"])
        assert rss(forkd.pid) - before < 64 << 20
    status_time(site["ctl"])
    # the shell still works for the next client
    with login(site["telnet"]) as again:
        again.sendall(b"6 * 7\r\n")
        assert b"42" in read_until(again, b"42")


def test_idle_connections_never_lock_the_administrator_out(site: dict[str, Any]) -> None:
    socks = []
    try:
        for _ in range(100):
            socks.append(socket.create_connection(("127.0.0.1", site["telnet"]), timeout=5))
        assert status_time(site["ctl"]) < 1.0
        with login(site["telnet"]) as admin:  # was: closed at once, every slot taken
            for _ in range(40):  # a flood while logged in does not evict the shell
                socks.append(socket.create_connection(("127.0.0.1", site["telnet"]), timeout=5))
            status_time(site["ctl"])
            admin.sendall(b"6 * 7\r\n")
            assert b"42" in read_until(admin, b"42")
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: _can_login(site["telnet"]), message="a login after the idle flood")
    assert status_time(site["ctl"]) < 1.0


def _can_login(port: int) -> bool:
    try:
        with login(port):
            return True
    except (OSError, AssertionError):
        return False


def test_a_megabyte_without_newline_at_the_login_prompt(site: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", site["telnet"]), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the master may close before it all went
            sock.sendall(b"a" * (1 << 20))
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    assert b"line too long" in data
    assert status_time(site["ctl"]) < 1.0
    assert _can_login(site["telnet"])


def test_junk_and_iac_floods_and_mid_statement_disconnects(site: dict[str, Any]) -> None:
    junk = bytes(range(256)) * 64 + bytes([255, 250]) + b"\x00" * 10000 + bytes([255]) * 5001
    with socket.create_connection(("127.0.0.1", site["telnet"]), timeout=5) as sock:
        sock.sendall(junk)
    with login(site["telnet"]) as sock:
        sock.sendall(b"def f():\r\n    return 1\r\n")
    with login(site["telnet"]) as sock:
        sock.sendall(junk + b"\r\n")
    assert status_time(site["ctl"]) < 1.0
    with login(site["telnet"]) as sock:
        sock.sendall(b"6 * 7\r\n")
        assert b"42" in read_until(sock, b"42")


def test_the_telnet_port_across_reload(site: dict[str, Any]) -> None:
    with login(site["telnet"]) as old:
        done = request(site["ctl"], "reload", timeout=20)
        assert done, done
        wait_for(lambda: _can_login(site["telnet"]), message="telnet after reload")
        old.settimeout(5)
        try:
            old.sendall(b"6 * 7\r\n")
            data = old.recv(65536)
        except OSError:
            data = b""
        assert data == b"" or b"42" in data, data
    assert status_time(site["ctl"]) < 1.0


def test_no_statement_runs_after_the_connection_was_closed_for_not_reading(
    site: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    marker = tmp_path / "ran-after-close"
    sock = login(site["telnet"], rcvbuf=4096)
    with sock:
        sock.sendall(
            b"print('x' * 200_000)\r\n" * 100  # 20 MB for a client that never reads
            + f"open({str(marker)!r}, 'w').close()\r\n".encode()
        )
        wait_for(lambda: "peer does not read" in site["forkd"].log(), message="the abort")
        status_time(site["ctl"])  # the master has read and handled everything sent
        assert not marker.exists()
