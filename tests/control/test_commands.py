"""Each control command's server half (forkd.control.commands) over a real control socket, against a
FakeMaster, and its client half's rendering."""

from __future__ import annotations

import argparse
import os
import pathlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from forkd import tapfile
from forkd.app import Application
from forkd.control.client import Connection, ControlError
from forkd.control.commands import COMMANDS, server_handlers
from forkd.control.commands import status as status_command
from forkd.control.server import ControlServer
from forkd.ports import port_key
from forkd.testing import FakeMaster, wait_for
from workers.echo import EchoFactory


@pytest.fixture
def master(tmp_path: Any) -> Iterator[FakeMaster]:
    app = Application("app")
    app.tapfile = str(tmp_path / "app.tap")
    fake = FakeMaster(app)
    app.listenTCP(0, EchoFactory(), interface="127.0.0.1")  # bound through the fake master
    tapfile.save(app, app.tapfile)
    fake.calls.clear()
    yield fake
    for port in app.ports:
        port.stopListening()
    assert fake.loop_errors == []


@pytest.fixture
def ctl(master: FakeMaster, tmp_path: Any) -> Iterator[Connection]:
    control = ControlServer(master, str(tmp_path / "app.ctl"))
    control.listen()
    with master.running(), Connection(control.path, timeout=10) as connection:
        yield connection
    control.close()


def disk_keys(master: FakeMaster) -> list[str]:
    return [port_key(p) for p in tapfile.load(master.tapfile).ports]


INTERNALS = (pathlib.Path(__file__).parents[2] / "docs" / "INTERNALS.md").read_text()


def test_registry_has_every_command_with_both_halves() -> None:
    assert list(COMMANDS) == [
        "status",
        "append",
        "remove",
        "restart",
        "reload",
        "save",
        "scale",
        "reopen",
        "stop",
        "shell",
    ]
    for name, module in COMMANDS.items():
        assert module.name == name
        doc = module.__doc__ or ""
        assert "Usage: forkctl" in doc
        assert "Protocol:" not in doc, "the wire protocol is in docs/INTERNALS.md, not --help"
        assert f"- `{name}`: " in INTERNALS, f"docs/INTERNALS.md documents {name}"
        for attr in ("add_arguments", "request_args", "execute", "render", "timeout"):
            assert hasattr(module, attr), (name, attr)
    assert set(server_handlers()) == set(COMMANDS)


def test_status(ctl: Connection, master: FakeMaster) -> None:
    result = ctl.call("status")
    assert result["pid"] == os.getpid()
    assert result["ports"][0]["key"].startswith("tcp:127.0.0.1:")


def test_status_table_shows_workers_ports_and_backoff(master: FakeMaster) -> None:
    result = master.status()
    result["backoff"] = {"failures": 3, "next_spawn_in": 4.0}
    result["unsaved"] = True
    text = status_command.render(result, argparse.Namespace(json=False))
    assert f"master pid {os.getpid()}" in text
    assert "WORKER" in text and "RSS" in text and "REQUESTS" in text
    assert "3 failed start(s), next spawn in 4.0s" in text
    assert "unsaved shell edits" in text
    assert "EchoFactory" in text and "tcp:127.0.0.1:" in text
    worker_line = next(line for line in text.splitlines() if line.startswith("1 "))
    assert "M " in worker_line  # the worker RSS, from psutil (the fake workers are this pid)
    as_json = status_command.render(result, argparse.Namespace(json=True))
    assert as_json.lstrip().startswith("{") and '"backoff"' in as_json


def test_append_serves_saves_and_reports(ctl: Connection, master: FakeMaster) -> None:
    result = ctl.call(
        "append", {"name": "echo", "options": ["--port", "0", "--interface", "127.0.0.1"]}
    )
    assert len(result["ports"]) == 1 and result["saved"] == master.tapfile
    key = result["ports"][0]["key"]
    assert key != "tcp:127.0.0.1:0"  # bound: the real port number
    assert key in [port_key(p) for p in master.application.ports]
    assert key in disk_keys(master)
    assert result["seconds"] >= 0
    port = int(key.rsplit(":", 1)[1])
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # it listens


def test_append_no_save_leaves_the_tap_alone(ctl: Connection, master: FakeMaster) -> None:
    before = disk_keys(master)
    result = ctl.call(
        "append", {"name": "echo", "options": ["-p", "0", "-i", "127.0.0.1"], "save": False}
    )
    assert result["saved"] is None and disk_keys(master) == before
    assert len(master.application.ports) == 2


def test_append_answers_only_when_every_worker_serves(master: FakeMaster, tmp_path: Any) -> None:
    control = ControlServer(master, str(tmp_path / "a.ctl"))
    control.listen()
    master.hold = True
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(control.path)
    from forkd.framing import encode

    sock.sendall(
        encode(
            {
                "version": 1,
                "id": 1,
                "command": "append",
                "args": {"name": "echo", "options": ["-p", "0", "-i", "127.0.0.1"]},
            }
        )
    )
    master.run_until(lambda: bool(master.held))
    for _ in range(20):
        master.step(0.001)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(1)  # no answer while a worker has yet to acknowledge
    master.release()
    sock.setblocking(True)
    sock.settimeout(5)
    master.run_until(lambda: not control.pending_replies)
    assert sock.recv(4)
    sock.close()
    control.close()


def test_append_existing_port_is_refused(ctl: Connection, master: FakeMaster) -> None:
    port = master.application.ports[0].port
    with pytest.raises(ControlError, match="already a port"):
        ctl.call("append", {"name": "echo", "options": ["-p", str(port), "-i", "127.0.0.1"]})


def test_append_port_in_use_is_refused_with_the_reason(ctl: Connection, master: FakeMaster) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(ControlError, match="cannot listen on .* in use"):
            ctl.call(
                "append",
                {"name": "echo", "options": ["-p", str(busy.getsockname()[1]), "-i", "127.0.0.1"]},
            )
    finally:
        busy.close()
    assert len(master.application.ports) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"name": "no-such-tap"}, "no tap module named"),
        ({"name": "echo", "options": ["--bogus"]}, "echo: Usage Error"),
        ({"name": "echo", "options": ["--port", "http"]}, "Usage Error"),
        ({"name": "echo", "options": "--port 1"}, "list of strings"),
        ({}, "'name' is required"),
        ({"name": "forkd.app"}, "not a tap module"),
    ],
)
def test_append_errors(ctl: Connection, args: dict[str, Any], expected: str) -> None:
    with pytest.raises(ControlError, match=expected):
        ctl.call("append", args)


def test_append_help_comes_back_as_text(ctl: Connection) -> None:
    result = ctl.call("append", {"name": "echo", "options": ["--help"]})
    assert "Echo server" in result["help"] and "--port" in result["help"]
    assert ctl.call("status")  # the master did not exit


def test_remove_by_key_and_by_number(ctl: Connection, master: FakeMaster) -> None:
    ctl.call("append", {"name": "echo", "options": ["-p", "0", "-i", "127.0.0.1"]})
    first, second = (port_key(p) for p in master.application.ports)
    result = ctl.call("remove", {"address": first})
    assert result == {"removed": first, "saved": master.tapfile}
    assert disk_keys(master) == [second]
    number = second.rsplit(":", 1)[1]
    assert ctl.call("remove", {"address": number, "save": False})["saved"] is None
    assert master.application.ports == [] and disk_keys(master) == [second]
    assert [name for name in master.names() if name == "remove_port"] == ["remove_port"] * 2


def test_remove_unknown_port(ctl: Connection, master: FakeMaster) -> None:
    with pytest.raises(ControlError, match="no port tcp:1 ") as refused:
        ctl.call("remove", {"address": "tcp:1"})
    assert "its ports: " + port_key(master.application.ports[0]) in str(refused.value)


def test_remove_tcp_port_bound_to_an_address_as_the_docs_write_it(
    ctl: Connection, master: FakeMaster
) -> None:
    """`forkctl remove tcp:PORT` works for `tcp:127.0.0.1:PORT` (issue 9, item 13)."""
    ctl.call("append", {"name": "echo", "options": ["-p", "0", "-i", "127.0.0.1"]})
    added = master.application.ports[-1]
    assert port_key(added) == f"tcp:127.0.0.1:{added.port}"
    assert ctl.call("remove", {"address": f"tcp:{added.port}"})["removed"] == port_key(added)


def test_restart(ctl: Connection, master: FakeMaster) -> None:
    assert ctl.call("restart") == {"generation": 2}
    assert "restart" in master.names()


def test_reload_refuses_unsaved_edits_unless_discard(ctl: Connection, master: FakeMaster) -> None:
    master.unsaved = True
    with pytest.raises(ControlError, match="unsaved shell edits.*--discard"):
        ctl.call("reload")
    assert "reload" not in master.names()
    assert ctl.call("reload", {"discard": True}) == {"generation": 2}
    assert ("reload", True) in master.calls


def test_reload_failure_is_the_commands_error(ctl: Connection, master: FakeMaster) -> None:
    master.fail_reload = "app.tap: a module it needs does not import: boom"
    with pytest.raises(ControlError, match="^app.tap: a module it needs does not import: boom$"):
        ctl.call("reload")


def test_save(ctl: Connection, master: FakeMaster, tmp_path: Any) -> None:
    result = ctl.call("save", {"tag": "known-good"})
    assert result["path"] == str(tmp_path / "app-known-good.tap")
    assert tapfile.load(result["path"]).name == "app"
    master.unsaved = True
    assert ctl.call("save")["path"] == master.tapfile
    assert master.unsaved is False
    before = (tmp_path / "app.tap").read_bytes() if (tmp_path / "app.tap").exists() else None
    for bad in ("../evil", "", "x y", ".hidden", "a/b", "x" * 65):
        with pytest.raises(ControlError, match="bad tag"):
            ctl.call("save", {"tag": bad})
    after = (tmp_path / "app.tap").read_bytes() if (tmp_path / "app.tap").exists() else None
    assert before == after, "an empty tag must not overwrite the tap itself"
    assert not list(tmp_path.glob("app-x *")), "no file name with a space"


def test_scale(ctl: Connection, master: FakeMaster) -> None:
    assert ctl.call("scale", {"spec": "+2"}) == {"target": 4}
    assert ctl.call("scale", {"spec": "-1"}) == {"target": 3}
    assert ctl.call("scale", {"spec": "5"}) == {"target": 5}
    for bad in ("", "two", "+", "1.5", "99999"):
        with pytest.raises(ControlError):
            ctl.call("scale", {"spec": bad})
    # as the real master: below zero is zero (every worker stops, the master keeps running)
    assert ctl.call("scale", {"spec": "-9"}) == {"target": 0}


def test_reopen_and_stop(ctl: Connection, master: FakeMaster) -> None:
    assert ctl.call("reopen") == {}
    assert ctl.call("stop", {"now": True}) == {"pid": os.getpid(), "graceful": False}
    assert ctl.call("stop") == {"pid": os.getpid(), "graceful": True}
    # the reply goes out before the master acts on it, so wait for the call to land
    wait_for(lambda: ("stop", False) in master.calls and ("stop", True) in master.calls, 5)
    with pytest.raises(ControlError, match="true or false"):
        ctl.call("stop", {"now": "yes"})


def test_shell_sessions_are_per_connection(
    ctl: Connection, master: FakeMaster, tmp_path: Any
) -> None:
    ctl.call("shell", {"source": "secret = 41"})
    assert ctl.call("shell", {"source": "secret + 1"}) == {"output": "42\n", "more": False}
    assert ctl.call("shell", {"source": "if True:"}) == {"output": "", "more": True}
    with Connection(str(tmp_path / "app.ctl")) as other:
        assert "NameError" in other.call("shell", {"source": "secret"})["output"]


def test_append_says_when_the_master_serves_a_port_itself() -> None:
    """`forkctl append telnet` said "every worker serves it" (issue 9, item 17)."""
    from forkd.control.commands import append

    ports = [{"key": "tcp:127.0.0.1:4040", "repr": "telnet", "served_by": "master"}]
    text = append.render({"ports": ports, "seconds": 0.002, "saved": None}, None)  # type: ignore[arg-type]
    assert "the master serves it itself" in text and "every worker" not in text
