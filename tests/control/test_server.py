"""The control socket server (forkd.control.server) against a FakeMaster and a real loop."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest

from forkd import tapfile
from forkd.app import Application
from forkd.control.client import Connection, ControlError, request
from forkd.control.reply import CommandError, Reply
from forkd.control.server import ControlServer, ControlSocketError
from forkd.control.wire import MAX_MESSAGE
from forkd.framing import HEADER, encode
from forkd.testing import FakeMaster, wait_for


@pytest.fixture
def application(tmp_path: Any) -> Application:
    app = Application("app")
    app.tapfile = str(tmp_path / "app.tap")
    tapfile.save(app, app.tapfile)
    return app


@pytest.fixture
def master(application: Application) -> FakeMaster:
    return FakeMaster(application)


@pytest.fixture
def server(master: FakeMaster, tmp_path: Any) -> Iterator[ControlServer]:
    control = ControlServer(master, str(tmp_path / "app.ctl"))
    control.listen()
    yield control
    control.close()
    assert master.loop_errors == []


def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def read_message(sock: socket.socket) -> dict[str, Any] | None:
    """One response, or None at EOF."""
    header = b""
    while len(header) < HEADER.size:
        chunk = sock.recv(HEADER.size - len(header))
        if not chunk:
            return None
        header += chunk
    (length,) = HEADER.unpack(header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "EOF inside a response"
        body += chunk
    return json.loads(body)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def status_request(request_id: int = 1) -> bytes:
    return encode({"version": 1, "id": request_id, "command": "status", "args": {}})


# -- the socket file ------------------------------------------------------------------------
def test_socket_is_created_mode_0600(server: ControlServer) -> None:
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_umask_is_restored_after_creating_the_socket(master: FakeMaster, tmp_path: Any) -> None:
    before = os.umask(0o022)
    try:
        control = ControlServer(master, str(tmp_path / "x.ctl"))
        control.listen()
        control.close()
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)


def test_too_long_path_names_the_control_option(master: FakeMaster, tmp_path: Any) -> None:
    path = str(tmp_path / ("x" * 120 + ".ctl"))
    with pytest.raises(ControlSocketError) as caught:
        ControlServer(master, path).listen()
    assert "--control" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_stale_socket_is_replaced(master: FakeMaster, tmp_path: Any) -> None:
    path = str(tmp_path / "stale.ctl")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nothing listens: a master that crashed
    control = ControlServer(master, path)
    control.listen()
    with master.running():
        assert request(path, "status")["pid"] == os.getpid()
    control.close()
    assert not os.path.exists(path)


def test_live_socket_is_refused(server: ControlServer, master: FakeMaster) -> None:
    with pytest.raises(ControlSocketError, match="another forkd master"):
        ControlServer(master, server.path).listen()


def test_regular_file_in_the_way_is_refused(master: FakeMaster, tmp_path: Any) -> None:
    path = tmp_path / "file.ctl"
    path.write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ControlServer(master, str(path)).listen()
    assert path.read_text() == "not a socket"


def test_adopts_an_inherited_socket(master: FakeMaster, server: ControlServer) -> None:
    duplicate = os.dup(server.fileno())
    server.master.remove_reader(server.sock)  # the old image stops serving it
    adopted = ControlServer(master, server.path, fd=duplicate)
    adopted.listen()
    with master.running():
        assert request(server.path, "status")["pid"] == os.getpid()
    adopted.close(unlink=False)


# -- requests and responses -----------------------------------------------------------------
def test_status_round_trip(server: ControlServer, master: FakeMaster) -> None:
    with master.running():
        result = request(server.path, "status")
    assert result["pid"] == os.getpid()
    assert ("status", None) in master.calls


def test_many_requests_on_one_connection_answer_in_order(
    server: ControlServer, master: FakeMaster
) -> None:
    with master.running():
        sock = raw_connect(server.path)
        sock.sendall(b"".join(status_request(n) for n in range(1, 51)))
        ids = [read_message(sock)["id"] for _ in range(50)]  # type: ignore[index]
        sock.close()
    assert ids == list(range(1, 51))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"id": 4, "command": "status"}', "unsupported protocol version"),
        (b'{"version": 2, "id": 4, "command": "status"}', "unsupported protocol version"),
        (b'{"version": 1, "id": 4, "command": 7}', "'command' must be a string"),
        (b'{"version": 1, "id": 4, "command": "status", "args": []}', "'args' must be an obj"),
        (b'{"version": 1, "id": 4, "command": "launch-missiles"}', "unknown command"),
        (b'{"version": 1, "id": 4, "command": "scale", "args": {"spec": 3}}', "must be a str"),
        (b'{"version": 1, "id": 4, "command": "scale", "args": {"spec": "lots"}}', "bad worker"),
        (b"", "not UTF-8 JSON"),
    ],
)
def test_malformed_messages_get_an_error_and_the_connection_stays_usable(
    server: ControlServer, master: FakeMaster, body: bytes, expected: str
) -> None:
    with master.running():
        sock = raw_connect(server.path)
        sock.sendall(frame(body))
        response = read_message(sock)
        assert response is not None
        assert response["ok"] is False and response["version"] == 1
        assert expected in response["error"]
        assert "\n" not in response["error"]
        sock.sendall(status_request(9))
        follow = read_message(sock)
        sock.close()
    assert follow is not None and follow["ok"] and follow["id"] == 9


def test_oversize_message_is_refused_and_the_connection_closed(
    server: ControlServer, master: FakeMaster
) -> None:
    with master.running():
        sock = raw_connect(server.path)
        sock.sendall(HEADER.pack(MAX_MESSAGE + 1) + b"x" * 1000)
        response = read_message(sock)
        assert response is not None and "limit" in response["error"]
        assert read_message(sock) is None  # closed
        sock.close()
        assert request(server.path, "status")["pid"] == os.getpid()


def test_message_of_exactly_the_limit_is_read(server: ControlServer, master: FakeMaster) -> None:
    body = json.dumps({"version": 1, "id": 3, "command": "status", "args": {}}).encode()
    body = body[:-1] + b" " * (MAX_MESSAGE - len(body)) + b"}"
    assert len(body) == MAX_MESSAGE
    with master.running():
        sock = raw_connect(server.path)
        sock.sendall(frame(body))
        response = read_message(sock)
        sock.close()
    assert response is not None and response["ok"] and response["id"] == 3


def test_ten_thousand_random_and_truncated_messages(
    server: ControlServer, master: FakeMaster
) -> None:
    """Random frames, random bytes, truncated frames, closes mid-message: the server answers
    or closes, never breaks, and still answers `status` afterwards."""
    rng = random.Random(20240604)
    valid = status_request(1)
    sent = answered = 0
    with master.running():
        sock = raw_connect(server.path)
        while sent < 10_000:
            kind = rng.randrange(5)
            if kind == 0:  # a frame holding random bytes: must be answered
                payload = rng.randbytes(rng.randrange(0, 64))
                sock.sendall(frame(payload))
                response = read_message(sock)
                assert response is not None and response["ok"] is False
                answered += 1
            elif kind == 1:  # a frame holding random JSON-ish text
                payload = rng.choice(
                    [
                        b'{"version": 1}',
                        b'{"version": 1, "id": {}, "command": "status", "args": 5}',
                        b'{"version": 1, "command": "save", "args": {"tag": 5}}',
                        b"null",
                        b"1e999",
                        b'"string"',
                        b'{"version": 1, "command": "stop", "args": {"now": "yes"}}',
                        b'{"version": 1, "command": "append", "args": {"name": 3}}',
                        b"[" * 50000 + b"]" * 50000,
                    ]
                )
                sock.sendall(frame(payload))
                response = read_message(sock)
                assert response is not None and response["ok"] is False
                answered += 1
            elif kind == 2:  # a frame cut short, then the connection dropped
                cut = rng.randrange(0, len(valid))
                sock.sendall(valid[:cut])
                sock.close()
                sock = raw_connect(server.path)
            elif kind == 3:  # raw garbage: an absurd length closes the connection
                sock.sendall(rng.randbytes(rng.randrange(1, 200)))
                sock.close()
                sock = raw_connect(server.path)
            else:  # a valid request in between
                sock.sendall(valid)
                response = read_message(sock)
                assert response is not None and response["ok"] is True
            sent += 1
        sock.close()
        assert request(server.path, "status")["pid"] == os.getpid()
    assert answered > 3000
    assert master.loop_errors == []


def test_many_clients_at_once(server: ControlServer, master: FakeMaster) -> None:
    with master.running():
        socks = [raw_connect(server.path) for _ in range(40)]
        for number, sock in enumerate(socks):
            sock.sendall(status_request(number))
        for number, sock in enumerate(socks):
            response = read_message(sock)
            assert response is not None and response["id"] == number and response["ok"]
            sock.close()


# -- slow and silent clients ----------------------------------------------------------------
def test_silent_client_mid_message_times_out(server: ControlServer, master: FakeMaster) -> None:
    server.message_timeout = 0.2
    server.sweep_interval = 0.05
    server._sweeper.cancel()
    server._schedule_sweep()
    with master.running():
        sock = raw_connect(server.path)
        sock.sendall(status_request()[:3])
        started = time.monotonic()
        assert read_message(sock) is None  # closed by the server, not by us
        assert time.monotonic() - started < 4
        sock.close()


def test_idle_client_times_out(server: ControlServer, master: FakeMaster) -> None:
    server.idle_timeout = 0.2
    server.sweep_interval = 0.05
    server._sweeper.cancel()
    server._schedule_sweep()
    with master.running():
        sock = raw_connect(server.path)
        assert read_message(sock) is None
        sock.close()
    assert not server.clients


def test_slow_client_never_blocks_others(tmp_path: Any) -> None:
    app = Application("app")
    app.tapfile = str(tmp_path / "app.tap")
    master = FakeMaster(app)
    control = ControlServer(master, str(tmp_path / "app.ctl"))
    control.listen()
    with master.running():
        slow = raw_connect(control.path)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Thousands of requests whose replies it never reads, and half a message.
        slow.sendall(b"".join(status_request(n) for n in range(3000)) + b"\x00\x00")
        wait_for(
            lambda: any(c.output.pending for c in list(control.clients)),
            5,
            interval=0.001,
            message="the server to buffer replies",
        )
        for _ in range(5):
            started = time.monotonic()
            assert request(control.path, "status", timeout=5)["pid"] == os.getpid()
            assert time.monotonic() - started < 2
        # Now it reads: every reply is there, in order.
        ids = [read_message(slow)["id"] for _ in range(3000)]  # type: ignore[index]
        assert ids == list(range(3000))
        slow.close()
    control.close()
    assert master.loop_errors == []


# -- peer credentials -----------------------------------------------------------------------
def start_client_as(uid: int, path: str) -> tuple[int, int]:
    """Fork a child that becomes `uid` and asks for `status`; (pid, read end of its report).

    Forked before the loop thread starts, so the child never inherits a held lock."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only socket calls, then _exit
        try:
            os.close(reader)
            os.setgid(uid)
            os.setuid(uid)
            try:
                request(path, "status", timeout=5)
                report = "ALLOWED"
            except ControlError as error:
                report = f"REFUSED {error}"
            os.write(writer, report.encode())
        finally:
            os._exit(0)
    os.close(writer)
    return pid, reader


def collect(pid: int, reader: int) -> str:
    chunks = []
    while chunk := os.read(reader, 4096):
        chunks.append(chunk)
    os.close(reader)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_other_uid_is_refused_by_peer_credentials(master: FakeMaster, tmp_path: Any) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    for path in [directory, *directory.parents]:  # let uid 65534 reach the socket file
        if str(path).startswith("/tmp/"):
            os.chmod(path, os.stat(path).st_mode | 0o005)
    control = ControlServer(master, str(directory / "app.ctl"))
    control.listen()

    child = start_client_as(65534, control.path)
    with master.running():
        assert "permission denied" in collect(*child)  # the 0600 file mode stops it first
    os.chmod(control.path, 0o666)  # file mode out of the way: SO_PEERCRED must refuse
    child = start_client_as(65534, control.path)
    with master.running():
        output = collect(*child)
    assert "REFUSED" in output and "uid 65534" in output, output
    child = start_client_as(0, control.path)
    with master.running():
        assert collect(*child) == "ALLOWED"
    assert control.refused == 1
    control.close()


# -- handlers -------------------------------------------------------------------------------
def test_a_handler_that_raises_answers_with_an_error(master: FakeMaster, tmp_path: Any) -> None:
    def broken(master: Any, args: dict[str, Any], reply: Any) -> None:
        raise RuntimeError("boom\nsecond line")

    def refuses(master: Any, args: dict[str, Any], reply: Any) -> None:
        raise CommandError("no, because")

    def twice(master: Any, args: dict[str, Any], reply: Any) -> None:
        reply(None, {"n": 1})
        reply(None, {"n": 2})

    control = ControlServer(
        master,
        str(tmp_path / "h.ctl"),
        handlers={"broken": broken, "refuses": refuses, "twice": twice},
    )
    control.listen()
    with master.running(), Connection(control.path) as connection:
        with pytest.raises(ControlError, match="broken: RuntimeError: boom second line"):
            connection.call("broken")
        with pytest.raises(ControlError, match="^no, because$"):
            connection.call("refuses")
        assert connection.call("twice") == {"n": 1}
        with pytest.raises(ControlError, match="^no, because$"):
            connection.call("refuses")  # not {"n": 2}: the second answer was dropped
    control.close()
    assert master.loop_errors == []


def test_reply_later_and_across_a_reexec(master: FakeMaster, tmp_path: Any) -> None:
    kept: list[Any] = []

    def later(master: Any, args: dict[str, Any], reply: Any) -> None:
        kept.append(reply)

    control = ControlServer(master, str(tmp_path / "r.ctl"), handlers={"later": later})
    control.listen()
    with master.running():
        sock = raw_connect(control.path)
        sock.sendall(encode({"version": 1, "id": 77, "command": "later", "args": {}}))
        wait_for(lambda: kept, 5, interval=0.001, message="the handler to keep the reply")
        state = kept[0].detach()  # what the old image does before exec
        assert json.loads(json.dumps(state))["id"] == 77
        kept[0]._detached_fd = None  # the old image is gone (exec); the fd lives on
        adopted = Reply.adopt(state)  # what the new image does
        adopted(None, {"generation": 2})
        response = read_message(sock)
        sock.close()
    assert response == {"version": 1, "id": 77, "ok": True, "result": {"generation": 2}}
    control.close()


def test_state_changes_are_logged_with_the_peer_uid(
    server: ControlServer, master: FakeMaster, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="forkd.control")
    with master.running():
        request(server.path, "scale", {"spec": "+1"})
        request(server.path, "status")
    lines = [r.getMessage() for r in caplog.records if r.name == "forkd.control"]
    assert any(f"uid {os.geteuid()}: scale" in line and "+1" in line for line in lines)
    assert not any(": status" in line for line in lines)


def test_close_removes_the_socket_and_drops_clients(master: FakeMaster, tmp_path: Any) -> None:
    control = ControlServer(master, str(tmp_path / "c.ctl"))
    control.listen()
    sock = raw_connect(control.path)
    master.run_until(lambda: bool(control.clients))
    control.close()
    assert not os.path.exists(control.path)
    assert read_message(sock) is None
    sock.close()
    with pytest.raises(ControlError, match="no control socket"):
        request(control.path, "status")
