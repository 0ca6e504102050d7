"""The telnet tap (workers/telnet.py) and the master-side driver (forkd.control.masterports),
on fakes, and hostile telnet clients against a real `forkd start -n` master.

The telnet shell is served in the master's own single-threaded loop, so no client may
stall it or make it grow without bound; the control socket must keep answering.
"""

from __future__ import annotations

import contextlib
import pathlib
import pickle
import socket
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from forkd import tapfile
from forkd.app import Application
from forkd.cli import mktap
from forkd.control.client import request
from forkd.control.masterports import MasterPorts
from forkd.control.server import ControlServer
from forkd.ports import TCPPort
from forkd.testing import FakeMaster, RunningForkd, StringTransport, free_port, wait_for
from forkd.usage import UsageError
from workers import telnet
from workers.echo import EchoFactory
from workers.telnet import ShellFactory, hash_password

IAC_WILL_ECHO = bytes([255, 251, 1])
IAC_WONT_ECHO = bytes([255, 252, 1])


# -- options and the tap --------------------------------------------------------------------
def test_no_password_no_tap() -> None:
    with pytest.raises(UsageError, match="password is required"):
        telnet.Options().parseOptions(["--port", "4040"])


def test_password_and_password_file_are_exclusive(tmp_path: Any) -> None:
    (tmp_path / "pw").write_text("secret\n")
    with pytest.raises(UsageError, match="not both"):
        telnet.Options().parseOptions(["--password", "x", "--password-file", str(tmp_path / "pw")])


def test_unreadable_password_file(tmp_path: Any) -> None:
    with pytest.raises(UsageError, match="cannot read password file"):
        telnet.Options().parseOptions(["--password-file", str(tmp_path / "missing")])


def test_tap_stores_only_a_salted_hash_and_binds_loopback(tmp_path: Any) -> None:
    (tmp_path / "pw").write_text("s3cret-pass\n")
    config = telnet.Options()
    config.parseOptions(
        ["--port", "0", "--username", "root", "--password-file", str(tmp_path / "pw")]
    )
    app = Application("app")
    ports = telnet.getPorts(app, config)
    ((port, factory),) = ports
    assert port.interface == "127.0.0.1"
    assert factory.servedByMaster is True
    assert factory.username == "root"
    data = pickle.dumps(factory)
    assert b"s3cret-pass" not in data
    assert telnet.verify_password("s3cret-pass", factory.passwordHash)
    assert not telnet.verify_password("s3cret-pas", factory.passwordHash)
    other = telnet.Options()
    other.parseOptions(["--password", "s3cret-pass"])
    assert other["password-hash"] != config["password-hash"]  # salted


def test_mktap_append_telnet(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    assert mktap.main(["echo", "--port", "0"]) == 0
    (tmp_path / "pw").write_text("correct-horse-battery\n")
    assert (
        mktap.main(["--append", "echo.tap", "telnet", "--port", "4040", "--password-file", "pw"])
        == 0
    )
    app = tapfile.load(str(tmp_path / "echo.tap"))
    assert [p.key for p in app.ports][1] == "tcp:127.0.0.1:4040"
    data = (tmp_path / "echo.tap").read_bytes()
    assert b"correct-horse-battery" not in data and b"scrypt$" in data
    with pytest.raises(SystemExit) as refused:  # no password: no tap
        mktap.main(["--append", "echo.tap", "telnet", "--port", "4041"])
    assert refused.value.code == 2


def test_verify_password_rejects_garbage_hashes() -> None:
    for stored in ("", "plain", "md5$1$1$1$00$00", "scrypt$x$8$1$00$00", "scrypt$16384$8$1$zz$00"):
        assert telnet.verify_password("anything", stored) is False


# -- the protocol on a StringTransport ------------------------------------------------------
@pytest.fixture
def master(tmp_path: Any) -> Iterator[FakeMaster]:
    app = Application("app")
    app.tapfile = str(tmp_path / "app.tap")
    fake = FakeMaster(app)
    yield fake
    for port in app.ports:
        port.stopListening()


def make_factory(password: str = "letmein") -> telnet.ShellFactory:
    return telnet.ShellFactory("admin", telnet.hash_password(password))


def connect(master: FakeMaster, factory: telnet.ShellFactory) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(("INET", "127.0.0.1", 1))
    protocol.master = master
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def feed(protocol: Any, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        protocol.dataReceived(data[start : start + chunk])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_login_then_shell_in_any_chunk_size(master: FakeMaster, chunk: int) -> None:
    protocol, transport = connect(master, make_factory())
    assert transport.value().endswith(b"username: ")
    feed(protocol, b"admin\r\n", chunk)
    assert transport.value().endswith(IAC_WILL_ECHO + b"password: ")
    # the client's answer to WILL ECHO (IAC DO ECHO) arrives mixed into the password line
    feed(protocol, bytes([255, 253, 1]) + b"letmein\r\x00", chunk)
    assert IAC_WONT_ECHO in transport.value()
    assert transport.value().endswith(b">>> ")
    transport.clear()
    feed(protocol, b"application.name\r\n", chunk)
    assert transport.value() == b"'app'\r\n>>> "
    transport.clear()
    feed(protocol, b"if True:\r\n    print(1)\r\n\r\n", chunk)
    assert transport.value() == b"... ... 1\r\n>>> "
    assert not transport.disconnecting


def test_wrong_password_is_refused_with_no_shell(master: FakeMaster) -> None:
    protocol, transport = connect(master, make_factory())
    protocol.dataReceived(b"admin\r\nwrong\r\napplication.name\r\n")
    assert b"login incorrect" in transport.value()
    assert b">>> " not in transport.value() and b"'app'" not in transport.value()
    assert transport.disconnecting and protocol.shell is None


def test_failed_logins_are_rate_limited_without_hashing(
    master: FakeMaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = make_factory()
    hashed: list[str] = []
    real_verify = telnet.verify_password

    def counting_verify(password: str, stored: str) -> bool:
        hashed.append(password)
        return real_verify(password, stored)

    monkeypatch.setattr(telnet, "verify_password", counting_verify)
    for _ in range(factory.MAX_FAILURES):
        protocol, transport = connect(master, factory)
        protocol.dataReceived(b"admin\r\nguess\r\n")
        assert b"login incorrect" in transport.value()
    protocol, transport = connect(master, factory)
    protocol.dataReceived(b"admin\r\nletmein\r\n")  # even the right password waits
    assert b"too many failed logins" in transport.value() and protocol.shell is None
    assert len(hashed) == factory.MAX_FAILURES  # the refused attempt cost no scrypt run
    assert "_failures" not in pickle.loads(pickle.dumps(factory)).__dict__
    factory._failures = [t - factory.FAILURE_WINDOW for t in factory._failures]  # time passes
    protocol, transport = connect(master, factory)
    protocol.dataReceived(b"admin\r\nletmein\r\n")
    assert transport.value().endswith(b">>> ")


def test_wrong_username_is_refused(master: FakeMaster) -> None:
    protocol, transport = connect(master, make_factory())
    protocol.dataReceived(b"root\nletmein\n")
    assert b"login incorrect" in transport.value() and transport.disconnecting


def test_overlong_login_line_closes(master: FakeMaster) -> None:
    protocol, transport = connect(master, make_factory())
    protocol.dataReceived(b"a" * 5000)
    assert transport.disconnecting and b"too long" in transport.value()


def test_telnet_negotiation_and_subnegotiation_are_ignored(master: FakeMaster) -> None:
    protocol, transport = connect(master, make_factory())
    noise = bytes([255, 250, 24, 1, 65, 66, 255, 240, 255, 244, 255, 251, 3])
    protocol.dataReceived(noise + b"adm" + noise + b"in\n" + b"letmein\n")
    assert transport.value().endswith(b">>> ")


# -- over a real socket, served by the master's loop ----------------------------------------
class TelnetClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.received = b""

    def until(self, marker: bytes, timeout: float = 5.0) -> bytes:
        def arrived() -> bool:
            if marker in self.received:
                return True
            data = self.sock.recv(65536)  # blocks until data comes: nothing to sleep for
            self.received += data
            return not data or marker in self.received

        wait_for(arrived, timeout, interval=0, message=lambda: f"{marker!r} in {self.received!r}")
        head, _, self.received = self.received.partition(marker)
        return head + (marker if _ else b"")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def closed(self) -> bool:
        try:
            while data := self.sock.recv(65536):
                self.received += data
        except OSError:
            pass
        return True


@pytest.fixture
def served(master: FakeMaster, tmp_path: Any) -> Iterator[tuple[FakeMaster, int]]:
    """An application with an echo port and a telnet port the master itself serves."""
    app = master.application
    app.listenTCP(0, EchoFactory(), interface="127.0.0.1")
    port = app.listenTCP(0, make_factory("pw"), interface="127.0.0.1")
    control = ControlServer(master, str(tmp_path / "app.ctl"))
    control.listen()
    with master.running():
        yield master, port.port
    control.close()
    assert master.loop_errors == []


def test_seed_session_over_telnet(served: tuple[FakeMaster, int], tmp_path: Any) -> None:
    master, port = served
    client = TelnetClient(port)
    client.until(b"username: ")
    client.send("admin")
    assert client.until(b"password: ").endswith(IAC_WILL_ECHO + b"password: ")
    client.send("pw")
    client.until(b">>> ")
    client.send("import __main__")
    client.until(b">>> ")
    client.send("__main__.application.ports")
    listing = client.until(b">>> ")
    assert b"EchoFactory on 127.0.0.1:" in listing and b"ShellFactory on 127.0.0.1:" in listing
    client.send("from workers.echo import EchoFactory")
    client.until(b">>> ")
    client.send("p = __main__.application.listenTCP(0, EchoFactory(), interface='127.0.0.1')")
    client.until(b">>> ")
    client.send("p.port")
    new_port = int(client.until(b">>> ").split(b"\r\n")[0])
    socket.create_connection(("127.0.0.1", new_port), timeout=2).close()  # bound, listening
    client.send("__main__.application.ports[0].factory.greeting = 'hi'")
    assert b"rolling restart started" in client.until(b">>> ")
    client.send("__main__.application.save('known-good')")
    client.until(b">>> ")
    saved = tapfile.load(str(tmp_path / "app-known-good.tap"))
    assert saved.ports[0].factory.greeting == "hi" and len(saved.ports) == 3
    assert master.changes == 1
    client.sock.close()


def test_wrong_password_over_a_real_socket(served: tuple[FakeMaster, int]) -> None:
    master, port = served
    client = TelnetClient(port)
    client.until(b"username: ")
    client.send("admin")
    client.until(b"password: ")
    client.send("not-the-password")
    client.send("application.name")
    assert client.closed()
    assert b"login incorrect" in client.received
    assert b">>> " not in client.received and b"'app'" not in client.received
    client.sock.close()


def test_master_ports_serve_and_unserve(master: FakeMaster) -> None:
    """What the real master calls for a servedByMaster port: serve, then unserve."""
    ports = MasterPorts(master)
    port = TCPPort(0, make_factory("pw"), interface="127.0.0.1")
    port.startListening()
    server = ports.serve(port)
    assert port in ports
    sock = socket.create_connection(("127.0.0.1", port.port), timeout=5)
    master.run_until(lambda: len(server.connections) == 1)
    ports.unserve(port)
    assert port not in ports and ports.servers == {}
    received = b""
    while data := sock.recv(4096):
        received += data
    assert received == b"forkd shell\r\nusername: "  # greeted, then closed by unserve
    sock.close()
    port.stopListening()
    assert master.loop_errors == []


# -- hostile clients against a real `forkd start -n` master ---------------------------------
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


@pytest.mark.e2e
@pytest.mark.timeout(60)
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


@pytest.mark.e2e
@pytest.mark.timeout(60)
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


@pytest.mark.e2e
@pytest.mark.timeout(60)
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


@pytest.mark.e2e
@pytest.mark.timeout(60)
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


@pytest.mark.e2e
@pytest.mark.timeout(60)
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


@pytest.mark.e2e
@pytest.mark.timeout(60)
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
