"""End-to-end: a real `forkd start` master, driven by the real `forkctl` and telnet, on
127.0.0.1 (issue 4's must-show list); and the control plane when the files under a running
master change or vanish, and when clients crowd it or die mid-request.
"""

from __future__ import annotations

import io
import os
import pathlib
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import probetap
import pytest

from forkd import tapfile
from forkd.app import Application
from forkd.cli import shell_client
from forkd.control.client import Connection, request
from forkd.framing import HEADER, encode
from forkd.testing import (
    RunningForkd,
    forkctl,
    forkctl_command,
    forkd_command,
    forkd_env,
    free_port,
    mktap,
    run_forkd,
    wait_for,
)
from tests import TAP_MODULES_DIR

PIDTAP = '''
"""A test tap: answers each connection's first line with "<greeting> <worker pid>"."""
import os
from forkd import usage
from forkd.ports import TCPPort
from forkd.protocol import Factory, Protocol, stats

usage_message = "pid tap"


class Pid(Protocol):
    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if b"\\n" in self.buffer:
            stats.requests += 1
            self.transport.write(f"{self.factory.greeting} {os.getpid()}\\n".encode())
            self.transport.loseConnection()


class PidFactory(Factory):
    protocol = Pid
    greeting = "hello"


class Options(usage.Options):
    optParameters = [["port", "p", 0, "port", usage.portCoerce]]


def getPorts(app, config):
    factory = PidFactory()
    return [(TCPPort(config["port"], factory, interface="127.0.0.1"), factory)]
'''

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def ask(port: int, timeout: float = 5.0) -> tuple[str, int]:
    """One request on a fresh connection to a pid tap: (greeting, worker pid)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"x\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    greeting, pid = data.decode().split()
    return greeting, int(pid)


class Load:
    """A bounded load loop in a thread: fresh connections, one request each; counts."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.ok = self.failed = self.refused = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() and n < 1_000_000:
            port = self.ports[n % len(self.ports)]
            n += 1
            try:
                ask(port)
                self.ok += 1
            except ConnectionRefusedError:
                self.refused += 1
            except Exception as error:
                self.failed += 1
                self.errors.append(f"{type(error).__name__}: {error}")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def site(tmp_path: pathlib.Path) -> Iterator[dict[str, Any]]:
    """A tap serving the pid tap on a free port, the test tap module importable by forkd."""
    (tmp_path / "pidtap.py").write_text(PIDTAP)
    sys.path.insert(0, str(tmp_path))
    import pidtap  # type: ignore[import-not-found]

    app = Application("app")
    factory = pidtap.PidFactory()
    port = free_port()
    from forkd.ports import TCPPort

    app.addPort(TCPPort(port, factory, interface="127.0.0.1"))
    app.tapfile = str(tmp_path / "app.tap")
    app.save()
    yield {
        "tap": app.tapfile,
        "port": port,
        "ctl": str(tmp_path / "app.ctl"),
        "dir": tmp_path,
    }
    sys.path.remove(str(tmp_path))
    sys.modules.pop("pidtap", None)


def test_append_reload_restart_under_load_lose_nothing(site: dict[str, Any]) -> None:
    ctl = site["ctl"]
    with RunningForkd(site["tap"], workers=2, extra_paths=[str(site["dir"])]) as forkd:
        assert stat.S_IMODE(os.stat(ctl).st_mode) == 0o600
        master_pid = forkd.pid
        workers = forkd.wait_workers(2)
        added: list[int] = []
        with Load([site["port"]]) as load:
            for _ in range(10):
                port = free_port()
                done = forkctl(ctl, "append", "pidtap", "--port", str(port), forkd=forkd)
                assert done.returncode == 0, done.stderr
                added.append(port)
                load.ports = [site["port"], *added]
                assert ask(port)[1] in workers  # served at once, by the same workers
                assert forkd.worker_pids() == workers  # no worker restarted
            for _ in range(10):
                done = forkctl(ctl, "reload", forkd=forkd)
                assert done.returncode == 0, done.stderr + forkd.log()[-3000:]
                new = forkd.wait_workers(2, exclude=workers)
                assert not new & workers  # every worker replaced
                workers = new
            for _ in range(5):
                done = forkctl(ctl, "restart", forkd=forkd)
                assert done.returncode == 0, done.stderr
                workers = forkd.wait_workers(2, exclude=workers)
            assert request(ctl, "status")["pid"] == master_pid
            wait_for(lambda: load.ok > 100, message="some load")
        assert forkd.pid == master_pid and forkd.process.poll() is None  # type: ignore[union-attr]
        assert (load.failed, load.refused) == (0, 0), load.errors[:5]
        assert all(ask(port)[0] == "hello" for port in added)  # saved: reloads kept them
        print(
            f"\nload during 10 appends, 10 reloads, 5 restarts: {load.ok} ok, "
            f"{load.failed} failed, {load.refused} refused"
        )


def test_append_is_served_by_every_worker_at_once(site: dict[str, Any]) -> None:
    with RunningForkd(site["tap"], workers=2, extra_paths=[str(site["dir"])]) as forkd:
        workers = forkd.wait_workers(2)
        port = free_port()
        started = time.monotonic()
        request(site["ctl"], "append", {"name": "pidtap", "options": ["--port", str(port)]})
        returned = time.monotonic()
        first = ask(port)  # the very next connection is served
        first_served = time.monotonic()
        seen = {first[1]}
        for _ in range(400):
            if seen == workers:
                break
            seen.add(ask(port)[1])
        assert seen == workers  # every worker serves the new port
        print(
            f"\nappend: command {1000 * (returned - started):.1f} ms, "
            f"first request served {1000 * (first_served - started):.1f} ms after the command"
        )


def test_reload_with_a_tap_module_that_raises_at_import(site: dict[str, Any]) -> None:
    ctl = site["ctl"]
    with RunningForkd(site["tap"], workers=2, extra_paths=[str(site["dir"])]) as forkd:
        workers = forkd.wait_workers(2)
        (site["dir"] / "pidtap.py").write_text(
            'raise RuntimeError("pidtap is broken at import")\n' + PIDTAP
        )
        with Load([site["port"]]) as load:
            done = forkctl(ctl, "reload")
            wait_for(lambda: load.ok > 20, message="requests after the failed reload")
        assert done.returncode != 0
        assert "pidtap is broken at import" in done.stderr
        assert done.stderr.count("\n") == 1
        assert (load.failed, load.refused) == (0, 0), load.errors[:5]
        assert forkd.worker_pids() == workers  # the old workers keep serving
        assert ask(site["port"])[0] == "hello"


def test_reload_serves_the_changed_code_of_a_tap_module(site: dict[str, Any]) -> None:
    ctl = site["ctl"]
    with RunningForkd(site["tap"], workers=2, extra_paths=[str(site["dir"])]) as forkd:
        workers = forkd.wait_workers(2)
        assert ask(site["port"])[0] == "hello"
        (site["dir"] / "pidtap.py").write_text(
            PIDTAP.replace('f"{self.factory.greeting} ', 'f"v2-{self.factory.greeting} ')
        )
        with Load([site["port"]]) as load:
            done = forkctl(ctl, "reload", forkd=forkd)
            assert done.returncode == 0, done.stderr
            new = forkd.wait_workers(2, exclude=workers)
            served = load.ok
            wait_for(lambda: load.ok > served + 20, message="requests after the reload")
        assert (load.failed, load.refused) == (0, 0), load.errors[:5]
        greeting, pid = ask(site["port"])
        assert greeting == "v2-hello" and pid in new  # new code, in the new generation
        assert request(ctl, "status")["pid"] == forkd.pid  # same master, re-executed


def test_seed_session_over_forkctl_shell_and_telnet(site: dict[str, Any]) -> None:
    tmp: pathlib.Path = site["dir"]
    (tmp / "pw").write_text("open-sesame\n")
    telnet_port, echo_port = free_port(), free_port()
    made = mktap(
        "--append",
        site["tap"],
        "telnet",
        "--port",
        str(telnet_port),
        "--password-file",
        str(tmp / "pw"),
        extra_paths=[str(tmp)],  # the tap names pidtap's classes
        cwd=tmp,
    )
    assert made.returncode == 0, made.stderr
    with RunningForkd(site["tap"], workers=2, extra_paths=[str(tmp)]) as forkd:
        workers = forkd.wait_workers(2)
        # telnet: a wrong password gets no shell
        with socket.create_connection(("127.0.0.1", telnet_port), timeout=5) as sock:
            sock.sendall(b"admin\r\nwrong\r\napplication\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        assert b"login incorrect" in data and b">>> " not in data
        # telnet: the seed's first steps
        with socket.create_connection(("127.0.0.1", telnet_port), timeout=5) as sock:
            sock.sendall(
                b"admin\r\nopen-sesame\r\nimport __main__\r\n__main__.application.ports\r\n"
            )
            data = b""
            while b"ShellFactory" not in data or not data.endswith(b">>> "):
                chunk = sock.recv(4096)
                assert chunk, data
                data += chunk
        assert b"PidFactory on 127.0.0.1:" in data
        # forkctl shell: the rest of the seed's session
        lines = iter(
            [
                "import __main__",
                "from workers.echo import EchoFactory",
                f"__main__.application.listenTCP({echo_port}, EchoFactory(), "
                "interface='127.0.0.1')",
                "__main__.application.ports[0].factory.greeting = 'changed'",
                "__main__.application.save('known-good')",
            ]
        )

        def read(prompt: str) -> str:
            try:
                return next(lines)
            except StopIteration:
                raise EOFError from None

        out = io.StringIO()
        assert shell_client.interact(site["ctl"], read=read, out=out, timeout=30) == 0
        assert "rolling restart started" in out.getvalue(), out.getvalue()
        with socket.create_connection(("127.0.0.1", echo_port), timeout=5) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"  # listenTCP served live
        new = forkd.wait_workers(2, exclude=workers)  # the rolling restart
        assert all(ask(site["port"])[0] == "changed" for _ in range(20))
        assert forkd.worker_pids() == new
        done = forkctl(site["ctl"], "stop")
        assert done.returncode == 0, done.stderr
        forkd.process.wait(30)  # type: ignore[union-attr]
    known_good, shutdown = tmp / "app-known-good.tap", tmp / "app-shutdown.tap"
    assert known_good.exists() and shutdown.exists()
    for saved in (known_good, shutdown):
        assert tapfile.load(str(saved)).ports[0].factory.greeting == "changed"
        with RunningForkd(str(saved), workers=1, extra_paths=[str(tmp)]):
            assert ask(site["port"])[0] == "changed"
            with socket.create_connection(("127.0.0.1", echo_port), timeout=5) as sock:
                sock.sendall(b"pong")
                assert sock.recv(4) == b"pong"


def test_random_control_messages_leave_the_real_master_serving(site: dict[str, Any]) -> None:
    rng = random.Random(4)
    with RunningForkd(site["tap"], workers=1, extra_paths=[str(site["dir"])]):
        ctl = site["ctl"]
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(ctl)
        for n in range(10_000):
            if n % 500 == 499:  # garbage that breaks the framing: the master closes
                sock.sendall(rng.randbytes(rng.randrange(8, 64)))
                sock.close()
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(ctl)
                continue
            if n % 97 == 0:  # a truncated frame, then hang up
                sock.sendall(encode({"version": 1, "command": "status"})[: rng.randrange(1, 20)])
                sock.close()
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(ctl)
                continue
            body = rng.randbytes(rng.randrange(0, 40))
            sock.sendall(HEADER.pack(len(body)) + body)
            header = sock.recv(4, socket.MSG_WAITALL)
            (length,) = HEADER.unpack(header)
            assert b'"ok":false' in sock.recv(length, socket.MSG_WAITALL)
        sock.close()
        assert request(ctl, "status")["workers"]
        assert ask(site["port"])[0] == "hello"


# -- hostile: files changed or gone under the master, crowds, clients dying mid-request -----


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["delete", "world-writable", "garbage", "newer", "empty"])
def test_damaged_tap_reload_and_save(tmp_path: pathlib.Path, damage: str) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        workers = forkd.wait_workers(1)
        if damage == "delete":
            os.unlink(tap)
        elif damage == "world-writable":
            os.chmod(tap, 0o666)
        elif damage == "garbage":
            pathlib.Path(tap).write_bytes(b"\x00garbage" * 10)
        elif damage == "empty":
            pathlib.Path(tap).write_bytes(b"")
        else:
            data = pathlib.Path(tap).read_bytes()
            header = tapfile.header().rstrip(b"\n")  # then the packages the tap names
            assert data.startswith(header)
            pathlib.Path(tap).write_bytes(header.replace(b"1", b"9", 1) + data[len(header) :])
        failed = forkctl(ctl, "reload")
        assert failed.returncode != 0
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert "Traceback" not in failed.stderr
        assert forkd.worker_pids() == workers
        assert probetap.ask(port, "hi") == "hi"
        saved = forkctl(ctl, "save")
        assert saved.returncode == 0, saved.stderr
        assert probetap.ports_of(tapfile.load(tap)) == [f"tcp:127.0.0.1:{port}"]
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr


@pytest.mark.timeout(60)
def test_control_socket_deleted_under_the_master(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        os.unlink(ctl)
        status = forkctl(ctl, "status")
        # one clean line, unless the master already bound it again (a slow forkctl start)
        assert status.returncode == 0 or len(status.stderr.strip().splitlines()) == 1
        assert "Traceback" not in status.stderr
        # the master binds it again: forkctl works without a restart
        wait_for(
            lambda: forkctl(ctl, "status").returncode == 0,
            timeout=10,
            message="the control socket to come back",
        )
        assert os.stat(ctl).st_mode & 0o777 == 0o600
        fstatus = run_forkd("status", tap, extra_paths=[TAP_MODULES_DIR], timeout=30)
        assert "Traceback" not in fstatus.stderr
        # the test is the master's parent: reap it, or `forkd stop` would wait on a zombie
        stop = subprocess.Popen(
            forkd_command("stop", tap),
            env=forkd_env([TAP_MODULES_DIR]),
            stderr=subprocess.PIPE,
            text=True,
        )
        assert forkd.process.wait(20) == 0, forkd.log()
        assert stop.wait(20) == 0, stop.communicate()[1]
        assert "Traceback" not in forkd.log()


@pytest.mark.timeout(60)
def test_fifty_concurrent_status_clients(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        results: list[object] = []
        lock = threading.Lock()

        def one() -> None:
            try:
                value: object = request(ctl, "status", timeout=30)["pid"]
            except Exception as error:
                value = error
            with lock:
                results.append(value)

        threads = [threading.Thread(target=one) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)
        assert results == [forkd.pid] * 50, results


@pytest.mark.timeout(60)
def test_client_killed_mid_reload(tmp_path: pathlib.Path) -> None:
    port = free_port()
    hold = str(tmp_path / "hold")
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port, hold_flag=hold)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(1)
        pathlib.Path(hold).touch()
        client = subprocess.Popen(forkctl_command("-c", ctl, "reload"), env=forkd_env())
        wait_for(lambda: len(forkd.worker_pids()) == 2, message="new generation forked")
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        os.unlink(hold)
        forkd.wait_workers(1, exclude=first)
        assert request(ctl, "status")["generation"] == 2
        assert forkd.process.poll() is None


@pytest.mark.timeout(60)
def test_client_gone_before_reload_refusal_reply(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        for _ in range(5):
            connection = Connection(ctl, 5)
            connection.sock.sendall(
                b"\x00\x00\x00\x3f"
                + b'{"version": 1, "id": 1, "command": "reload", "args": {}}'.ljust(63)
            )
            connection.close()
        assert request(ctl, "status")["pid"] == forkd.pid


@pytest.mark.timeout(60)
def test_shell_session_survives_restart_and_reload(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(1)
        out = io.StringIO()
        lines = ["x = 41", "after_restart", "after_reload", "x = 1", "x + 1"]

        def read(prompt: str) -> str:
            if not lines:
                raise EOFError
            line = lines.pop(0)
            if line == "after_restart":
                assert forkctl(ctl, "restart").returncode == 0
                forkd.wait_workers(1, exclude=first)
                return "x + 1"
            if line == "after_reload":
                assert forkctl(ctl, "reload").returncode == 0
                return "x + 1"
            return line

        assert shell_client.interact(ctl, read=read, out=out, timeout=30) == 0
        text = out.getvalue()
        assert "42" in text  # the session outlived the restart
        assert "new shell session" in text and "Traceback" not in text
        assert text.rstrip().endswith("2"), text
