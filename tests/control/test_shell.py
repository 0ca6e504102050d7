"""The live shell (forkd.control.shell) against a FakeMaster: the seed's session, changes."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from forkd import tapfile
from forkd.app import Application
from forkd.cli import shell_client
from forkd.control.server import ControlServer
from forkd.control.shell import Shell, changed, fingerprint
from forkd.testing import FakeMaster
from workers.echo import EchoFactory


class Resource:
    """Stands in for a web resource with a `path`, as in the seed."""

    def __init__(self, path: str) -> None:
        self.path = path


@pytest.fixture
def master(tmp_path: Any) -> Iterator[FakeMaster]:
    app = Application("app")
    app.tapfile = str(tmp_path / "app.tap")
    factory = EchoFactory()
    factory.resource = Resource("/var/www")  # type: ignore[attr-defined]
    app.listenTCP(0, EchoFactory(), interface="127.0.0.1")  # no runtime yet: not bound
    app.listenTCP(0, factory, interface="127.0.0.2")
    for port in app.ports:  # bound as the master binds them: real port numbers, real keys
        port.startListening()
    tapfile.save(app, app.tapfile)
    fake = FakeMaster(app)
    had_main = hasattr(sys.modules["__main__"], "application")
    yield fake
    for port in app.ports:
        port.stopListening()
    if not had_main and hasattr(sys.modules["__main__"], "application"):
        del sys.modules["__main__"].application


def run(shell: Shell, *lines: str) -> str:
    """Feed lines as the client does (the pending statement each time); all the output."""
    output, pending = [], []
    for line in lines:
        pending.append(line)
        text, more = shell.push("\n".join(pending))
        output.append(text)
        if not more:
            pending = []
    assert not pending, "statement left incomplete"
    return "".join(output)


def test_seed_session_import_main_and_list_ports(master: FakeMaster) -> None:
    shell = Shell(master)
    output = run(shell, "import __main__", "__main__.application.ports")
    for port in master.application.ports:
        assert repr(port) in output
    assert "<workers.echo.EchoFactory on 127.0.0.2:" in output
    assert output.startswith("[") and master.changes == 0


def test_application_is_in_the_namespace(master: FakeMaster) -> None:
    assert "'app'" in run(Shell(master), "application.name")


def test_listen_tcp_is_a_live_append_not_a_restart(master: FakeMaster) -> None:
    shell = Shell(master)
    output = run(
        shell,
        "import __main__",
        "from workers.echo import EchoFactory",
        "port = __main__.application.listenTCP(0, EchoFactory(), interface='127.0.0.1')",
        "port.port > 0",
    )
    assert output.strip().endswith("True")
    assert "add_port" in master.names()
    assert master.changes == 0  # the new port is already live: no rolling restart
    assert len(master.application.ports) == 3
    assert master.unsaved is True  # not in the tap file yet: a reload must not drop it


def test_remove_port_is_live_too(master: FakeMaster) -> None:
    run(Shell(master), "application.removePort(application.ports[0])")
    assert "remove_port" in master.names()
    assert master.changes == 0
    assert len(master.application.ports) == 1


def test_attribute_change_starts_a_rolling_restart_and_says_so(master: FakeMaster) -> None:
    shell = Shell(master)
    output = run(
        shell, "import __main__", "__main__.application.ports[1].factory.resource.path = 'static'"
    )
    assert master.changes == 1
    assert "rolling restart started" in output
    assert master.application.ports[1].factory.resource.path == "static"
    run(shell, "x = 5", "print(x)")  # namespace only: the application did not change
    assert master.changes == 1


def test_a_statement_that_raises_prints_the_traceback_and_changes_nothing(
    master: FakeMaster,
) -> None:
    shell = Shell(master)
    before = fingerprint(master.application)
    output = run(shell, "application.ports[7]")
    assert "Traceback" in output and "IndexError" in output
    assert "forkd/shell.py" not in output  # the shell's own frame is not shown
    assert master.changes == 0 and master.calls == []
    assert not changed(before, fingerprint(master.application))
    assert "1" in run(shell, "1")  # and the shell still works


def test_a_change_before_an_exception_is_still_rolled_out(master: FakeMaster) -> None:
    output = run(Shell(master), "application.ports[1].factory.resource.path = 'x'; 1/0")
    assert "ZeroDivisionError" in output
    assert master.changes == 1  # else the workers would silently differ from the master


def test_multi_line_statements(master: FakeMaster) -> None:
    shell = Shell(master)
    assert shell.push("def double(x):") == ("", True)
    assert shell.push("def double(x):\n    return 2 * x") == ("", True)
    assert shell.push("def double(x):\n    return 2 * x\n") == ("", False)
    assert run(shell, "double(21)") == "42\n"
    output = run(shell, "for n in range(2):", "    print(n)", "")
    assert output == "0\n1\n"


def test_syntax_error_is_reported(master: FakeMaster) -> None:
    output, more = Shell(master).push("1 +* 2")
    assert not more and "SyntaxError" in output


def test_exit_does_not_stop_the_master(master: FakeMaster) -> None:
    output = run(Shell(master), "raise SystemExit(3)")
    assert "cannot exit the master" in output
    output = run(Shell(master), "exit()")
    assert "cannot exit the master" in output


@pytest.mark.parametrize("statement", ["while True: pass\n", "import time; time.sleep(600)"])
def test_a_statement_that_runs_too_long_is_interrupted(master: FakeMaster, statement: str) -> None:
    alarm_before = signal.getsignal(signal.SIGALRM)
    shell = Shell(master)
    shell.timeout = 0.2
    started = time.monotonic()
    output, more = shell.push(statement)
    assert time.monotonic() - started < 5 and not more
    assert "ShellTimeout: statement interrupted after 0.2s" in output
    assert shell.push("1 + 1") == ("2\n", False)  # the session goes on
    assert signal.getsignal(signal.SIGALRM) is alarm_before  # put back as it was


def test_output_is_captured_not_printed(master: FakeMaster, capsys: Any) -> None:
    output = run(Shell(master), "import sys", "print('out')", "print('err', file=sys.stderr)")
    assert output == "out\nerr\n"
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_huge_output_is_cut(master: FakeMaster) -> None:
    output = run(Shell(master), "print('x' * 1000000)")
    assert len(output) < 300_000 and "output cut" in output


def test_save_known_good_writes_the_tagged_tap(master: FakeMaster, tmp_path: Any) -> None:
    shell = Shell(master)
    run(shell, "application.ports[1].factory.resource.path = 'static'")
    output = run(shell, "import __main__", "__main__.application.save('known-good')")
    path = tmp_path / "app-known-good.tap"
    assert str(path) in output
    saved = tapfile.load(str(path))
    assert saved.ports[1].factory.resource.path == "static"
    assert master.changes == 1  # saving is not a change of the application


def test_unpicklable_attribute_counts_as_a_change(master: FakeMaster) -> None:
    run(Shell(master), "application.ports[0].factory.lock = __import__('threading').Lock()")
    assert master.changes == 1


def test_fingerprint_ignores_ports_added_and_removed() -> None:
    app = Application("a")
    app.listenTCP(1, EchoFactory())
    before = fingerprint(app)
    app.listenTCP(2, EchoFactory())
    assert not changed(before, fingerprint(app))
    app.ports[0].factory.extra = 1
    assert changed(before, fingerprint(app))
    app.uid = 5
    assert changed(fingerprint(Application("a")), fingerprint(app))


def test_seed_session_over_forkctl_shell(master: FakeMaster, tmp_path: Any) -> None:
    """The same session as the seed's, typed into `forkctl shell` over the control socket."""
    control = ControlServer(master, str(tmp_path / "app.ctl"))
    control.listen()
    lines = iter(
        [
            "import __main__",
            "__main__.application.ports",
            "from workers.echo import EchoFactory",
            "__main__.application.listenTCP(0, EchoFactory(), interface='127.0.0.1')",
            "__main__.application.ports[1].factory.resource.path = 'static'",
            "if True:",
            "    print('multi', 'line')",
            "",
            "1/0",
            "__main__.application.save('known-good')",
        ]
    )
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    with master.running():
        assert shell_client.interact(control.path, read=read, out=out, timeout=10) == 0
    control.close()
    text = out.getvalue()
    assert "<workers.echo.EchoFactory on 127.0.0.2:" in text
    assert "rolling restart started" in text
    assert "multi line" in text
    assert "ZeroDivisionError" in text
    assert os.path.exists(tmp_path / "app-known-good.tap")
    assert prompts.count("... ") == 2 and prompts[0] == ">>> "
    assert master.changes == 1 and "add_port" in master.names()
    assert master.loop_errors == []


def test_ports_edited_as_a_list_are_stopped_or_served_like_remove_and_add(
    master: FakeMaster,
) -> None:
    shell = Shell(master)
    output = run(shell, "gone = application.ports.pop(0)")
    assert "left application.ports: it is no longer served" in output
    assert master.names().count("remove_port") == 1  # as removePort would have
    output = run(
        shell,
        "from forkd.ports import TCPPort",
        "from workers.echo import EchoFactory",
        "application.ports.append(TCPPort(0, EchoFactory(), interface='127.0.0.1'))",
    )
    assert "joined application.ports: it is served now" in output
    assert master.names().count("add_port") == 1
    # the recorded path (listenTCP/removePort) is not done twice
    run(shell, "application.removePort(application.ports[-1])")
    assert master.names().count("remove_port") == 2


def test_a_port_in_use_is_one_line_in_the_shell(master: FakeMaster) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = run(
            Shell(master),
            "from workers.echo import EchoFactory",
            f"application.listenTCP({port}, EchoFactory(), interface='127.0.0.1')",
        )
    assert f"PortError: cannot listen on tcp:127.0.0.1:{port}: Address already in use" in output
    assert "Traceback" not in output
    assert len(master.application.ports) == 2  # nothing changed
