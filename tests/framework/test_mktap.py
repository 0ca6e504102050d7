"""mktap end to end: the CLI as a user runs it, in a scratch directory.

The user errors at the end were each a bug found by using the tool: a tap module's garbage
written into a tap or reported as a bare unpacking error, a read-only tap or a file that is
not a tap overwritten. Each must be one line, the right exit, and no data lost."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from forkd import tapfile
from forkd.testing import mktap

pytestmark = pytest.mark.e2e  # every test runs mktap in a subprocess

TAP_HEAD = "from forkd import usage\nfrom forkd.protocol import Factory\n"


def mktap_in(cwd: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """mktap run in `cwd`, with `cwd` importable (for the test's own tap modules)."""
    return mktap(*args, cwd=cwd, extra_paths=[str(cwd)])


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_create_then_append_gives_two_ports(tmp_path) -> None:
    done = mktap_in(tmp_path, "echo", "--port", "9001")
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"mktap: wrote {tmp_path / 'echo.tap'}\n"
    done = mktap_in(tmp_path, "--append", "echo.tap", "echo", "--port", "9002")
    assert done.returncode == 0, done.stderr
    app = tapfile.load(str(tmp_path / "echo.tap"))
    assert [repr(p) for p in app.ports] == [
        "<workers.echo.EchoFactory on 127.0.0.1:9001>",  # loopback unless told
        "<workers.echo.EchoFactory on 127.0.0.1:9002>",
    ]


def test_output_and_user_group(tmp_path) -> None:
    done = mktap_in(
        tmp_path, "-o", "custom.tap", "-u", "65534", "-g", "65534", "daytime", "-p", "8013"
    )
    assert done.returncode == 0, done.stderr
    app = tapfile.load(str(tmp_path / "custom.tap"))
    assert (app.uid, app.gid) == (65534, 65534) and app.ports[0].port == 8013


def test_list_names_each_tap_with_its_summary(tmp_path) -> None:
    done = mktap_in(tmp_path, "--list")
    assert done.returncode == 0
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert lines["echo"].startswith("Echo server")
    assert lines["daytime"].startswith("Daytime server")


def test_tap_help_shows_usage_message_and_options(tmp_path) -> None:
    done = mktap_in(tmp_path, "echo", "--help")
    assert done.returncode == 0
    assert "Usage: mktap [mktap options] echo [echo options]" in done.stdout
    assert "sends back every byte" in done.stdout and "--port" in done.stdout
    assert not (tmp_path / "echo.tap").exists()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["echo", "--port", "notanumber"], "mktap: echo: Parameter type enforcement failed"),
        (["echo", "--port", "70000"], "mktap: echo: Parameter type enforcement failed"),
        (["echo", "--nosuchoption"], "mktap: echo: option --nosuchoption not recognized"),
        (["daytime", "--port", "x"], "mktap: daytime: port must be a number"),
    ],
)
def test_bad_tap_options_exit_2_with_one_line_and_the_help_hint(tmp_path, args, error) -> None:
    """Only the line that helps, not the 14-25 lines of the option table before it."""
    done = mktap_in(tmp_path, *args)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(error) and line.endswith(f"(mktap {args[0]} --help lists its options)")
    assert not list(tmp_path.iterdir())


def test_list_shows_whole_first_paragraphs(tmp_path) -> None:
    listed = mktap_in(tmp_path, "--list")
    hello = next(line for line in listed.stdout.splitlines() if line.startswith("hello"))
    assert hello.endswith("for benchmarks and smoke tests."), hello


def test_unknown_tap_exits_non_zero_naming_it(tmp_path) -> None:
    done = mktap_in(tmp_path, "nosuchtap")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "mktap: no tap module named 'nosuchtap' (mktap --list shows the known ones)"
    )


def test_a_module_that_is_not_a_tap(tmp_path) -> None:
    done = mktap_in(tmp_path, "json")
    assert done.returncode == 1 and "json is not a tap module" in done.stderr


def test_append_to_a_bad_file_or_a_taken_port(tmp_path) -> None:
    (tmp_path / "junk.tap").write_bytes(b"junk")
    done = mktap_in(tmp_path, "--append", "junk.tap", "echo")
    assert done.returncode == 1 and "not a forkd tap file" in done.stderr
    assert (tmp_path / "junk.tap").read_bytes() == b"junk"
    mktap_in(tmp_path, "echo", "--port", "9001")
    done = mktap_in(tmp_path, "--append", "echo.tap", "echo", "--port", "9001")
    assert done.returncode == 1 and "tcp:127.0.0.1:9001 is already a port" in done.stderr


def test_seed_style_tap_module_from_a_dotted_path(tmp_path) -> None:
    """A tap written for early Twisted, imports pointed at forkd, works unchanged."""
    (tmp_path / "seedtap.py").write_text(
        "from forkd import usage\n"
        "from forkd.protocol import Protocol, Factory\n"
        "usage_message = '''Seed-style tap.\n\nSays hello.'''\n"
        "class Hello(Protocol):\n"
        "    def connectionMade(self):\n"
        "        self.transport.write(b'hello ' + self.factory.who.encode())\n"
        "        self.transport.loseConnection()\n"
        "    def connectionLost(self):\n"
        "        pass\n"
        "class Options(usage.Options):\n"
        "    optStrings = [['port', 'p', '9010'], ['who', 'w', 'world']]\n"
        "    optFlags = [['loud', 'l']]\n"
        "    def opt_shout(self):\n"
        "        self.loud = 1\n"
        "def getPorts(app, config):\n"
        "    f = Factory()\n"
        "    f.protocol = Hello\n"
        "    f.who = config.who.upper() if config.loud else config.who\n"
        "    return [(int(config.port), f)]\n"
    )
    done = mktap_in(tmp_path, "seedtap", "--port", "9011", "--shout", "-w", "twisted")
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        app = tapfile.load(str(tmp_path / "seedtap.tap"))
    finally:
        sys.path.remove(str(tmp_path))
    (port,) = app.ports
    assert port.port == 9011 and port.factory.who == "TWISTED"


# -- user errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "raise RuntimeError('at import')\n",
            "mktap: tap module 'brokentap' does not import: RuntimeError: at import",
        ),
        (
            "class Options(usage.Options):\n"
            "    def __init__(self): raise ValueError('no options')\n"
            "def getPorts(app, config): return []\n",
            "mktap: tap module 'brokentap': its Options cannot be created: ValueError: no options",
        ),
        (
            "class Options(usage.Options): pass\ndef getPorts(app, config): return [(1, 2, 3)]\n",
            "mktap: brokentap.getPorts item 0 is not a (port, factory) pair: 3 items",
        ),
        (
            "class Options(usage.Options): pass\n"
            "def getPorts(app, config): return [(8080, None)]\n",
            "mktap: brokentap.getPorts item 0: None is not a factory",
        ),
        (
            "class Options(usage.Options): pass\n"
            "def getPorts(app, config): return [(99999, Factory())]\n",
            "mktap: bad TCP port 99999: a port is a number from 0 to 65535",
        ),
        (
            "class Options(usage.Options): pass\n"
            "class F(Factory):\n"
            "    def __init__(self): self.on_error = lambda: None\n"
            "def getPorts(app, config): return [(8080, F())]\n",
            "mktap: cannot pickle application.ports[0].factory.on_error: ",
        ),
    ],
)
def test_a_broken_tap_module_is_one_line_and_writes_nothing(
    tmp_path: Any, body: str, message: str
) -> None:
    (tmp_path / "brokentap.py").write_text(TAP_HEAD + body)
    done = mktap_in(tmp_path, "brokentap")
    assert done.returncode == 1
    assert one_line(done).startswith(message)
    assert not (tmp_path / "brokentap.tap").exists()


def test_append_refuses_a_read_only_tap_and_leaves_it_alone(tmp_path: Any) -> None:
    assert mktap_in(tmp_path, "echo", "--port", "9001").returncode == 0
    tap = tmp_path / "echo.tap"
    before = tap.read_bytes()
    tap.chmod(0o444)
    done = mktap_in(tmp_path, "--append", "echo.tap", "echo", "--port", "9002")
    assert done.returncode == 1
    assert "the tap file is read-only (mode 444)" in one_line(done)
    assert tap.read_bytes() == before


def test_output_never_overwrites_a_file_that_is_not_a_tap(tmp_path: Any) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    done = mktap_in(tmp_path, "-o", "notes.txt", "echo")
    assert done.returncode == 1
    assert "notes.txt exists and is not a tap file; not overwriting it" in one_line(done)
    assert (tmp_path / "notes.txt").read_text() == "precious"
    (tmp_path / "empty.tap").write_bytes(b"")
    assert mktap_in(tmp_path, "-o", "empty.tap", "echo").returncode == 0


def test_output_into_a_missing_directory_is_one_line(tmp_path: Any) -> None:
    done = mktap_in(tmp_path, "-o", "missing/x.tap", "echo")
    assert done.returncode == 1
    assert one_line(done) == "mktap: cannot write missing/x.tap: No such file or directory"


SHOUTER = """
from forkd import usage
from forkd.ports import TCPPort
from forkd.protocol import Factory, Protocol

usage_message = "Shouts back."


class Shout(Protocol):
    def dataReceived(self, data):
        self.transport.write(data.upper())


class Options(usage.Options):
    optParameters = [["port", "p", 0, "port", usage.portCoerce]]


def getPorts(app, config):
    factory = Factory()
    factory.protocol = Shout
    return [(TCPPort(config["port"], factory, interface="127.0.0.1"), factory)]
"""


def test_the_installed_mktap_finds_a_tap_module_in_the_current_directory(tmp_path) -> None:
    """`mktap shouter` beside shouter.py said "no tap module named 'shouter'": an installed
    script's sys.path holds its own directory, not the current one (issue 10, item 3)."""
    import shutil

    script = os.path.join(os.path.dirname(sys.executable), "mktap")
    if not os.path.exists(script):
        script = shutil.which("mktap") or ""
    if not script:
        pytest.skip("no installed mktap script")
    (tmp_path / "shouter.py").write_text(SHOUTER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [script, "shouter", "--port", "0"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "shouter.tap").exists()
