"""Tap files written by an earlier release (tests/fixtures/taps/) load and serve today.

A .tap pickle names class paths (`forkd.app.Application`, `forkd.ports.TCPPort`,
`forkd.web.server.Site`, `workers.*`): moving one of them without a loader alias would
break every tap file in the field. Each fixture is loaded, moved to a free loopback port and
a scratch directory (the only edits), started with the real `forkd start`, and talked to.
"""

from __future__ import annotations

import pathlib
import shutil
import socket
import urllib.request
from typing import Any

import pytest

from forkd import tapfile
from forkd.testing import RunningForkd, free_port, wait_for

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "taps"


def copy_fixture(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / name
    shutil.copyfile(FIXTURES / name, target)
    target.chmod(0o600)
    return target


def load_on_free_port(name: str, tmp_path: pathlib.Path) -> tuple[Any, int]:
    """The fixture's application, its one port moved to a free port, saved in tmp_path."""
    path = copy_fixture(name, tmp_path)
    application = tapfile.load(str(path))
    [port] = application.ports
    port.port = free_port()
    tapfile.save(application, str(path))
    return application, port.port


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("echo-0.1.tap", ("forkd.ports.TCPPort", "workers.echo.EchoFactory")),
        ("web-0.1.tap", ("forkd.ports.TCPPort", "forkd.web.server.Site")),
        ("telnet-0.1.tap", ("forkd.ports.TCPPort", "workers.telnet.ShellFactory")),
    ],
)
def test_an_old_tap_loads_with_the_class_paths_it_names(
    name: str, classes: tuple[str, str], tmp_path: pathlib.Path
) -> None:
    application = tapfile.load(str(copy_fixture(name, tmp_path)))
    assert f"{type(application).__module__}.{type(application).__qualname__}" == (
        "forkd.app.Application"
    )
    [port] = application.ports
    found = tuple(f"{type(o).__module__}.{type(o).__qualname__}" for o in (port, port.factory))
    assert found == classes


@pytest.mark.e2e
def test_an_old_echo_tap_serves(tmp_path: pathlib.Path) -> None:
    _, port = load_on_free_port("echo-0.1.tap", tmp_path)
    with (
        RunningForkd(str(tmp_path / "echo-0.1.tap"), workers=1),
        socket.create_connection(("127.0.0.1", port), timeout=10) as conn,
    ):
        conn.sendall(b"still here\r\n")
        received = b""
        while len(received) < 12:
            chunk = conn.recv(64)
            assert chunk, "the echo server closed the connection"
            received += chunk
        assert received == b"still here\r\n"


@pytest.mark.e2e
def test_an_old_web_tap_serves(tmp_path: pathlib.Path) -> None:
    application, port = load_on_free_port("web-0.1.tap", tmp_path)
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("hello fixture\n")
    application.ports[0].factory.resource.path = str(root)
    tapfile.save(application, str(tmp_path / "web-0.1.tap"))
    with (
        RunningForkd(str(tmp_path / "web-0.1.tap"), workers=1),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response,
    ):
        assert response.status == 200
        assert response.read() == b"hello fixture\n"


def read_until(conn: socket.socket, marker: bytes) -> None:
    """Read from `conn` until `marker` has arrived (the socket's timeout bounds each read)."""
    received = bytearray()

    def arrived() -> bool:
        chunk = conn.recv(256)
        assert chunk, f"closed before {marker!r}; got {bytes(received)!r}"
        received.extend(chunk)
        return marker in received

    wait_for(arrived, timeout=10, message=repr(marker))


@pytest.mark.e2e
def test_an_old_telnet_tap_serves_its_login(tmp_path: pathlib.Path) -> None:
    _, port = load_on_free_port("telnet-0.1.tap", tmp_path)
    with (
        RunningForkd(str(tmp_path / "telnet-0.1.tap"), workers=1),
        socket.create_connection(("127.0.0.1", port), timeout=10) as conn,
    ):
        read_until(conn, b"username: ")
        conn.sendall(b"admin\r\n")
        read_until(conn, b"password: ")
        conn.sendall(b"fixture-pw\r\n")
        read_until(conn, b">>> ")
        conn.sendall(b"len(application.ports)\r\n")
        read_until(conn, b"1\r\n")
