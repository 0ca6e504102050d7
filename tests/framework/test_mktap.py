"""mktap end to end: the CLI as a user runs it, in a scratch directory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from forkd import tapfile


def mktap(cwd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forkd.cli.mktap", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_create_then_append_gives_two_ports(tmp_path) -> None:
    assert mktap(tmp_path, "echo", "--port", "9001").returncode == 0
    done = mktap(tmp_path, "--append", "echo.tap", "echo", "--port", "9002")
    assert done.returncode == 0, done.stderr
    app = tapfile.load(str(tmp_path / "echo.tap"))
    assert [repr(p) for p in app.ports] == [
        "<workers.echo.EchoFactory on 9001>",
        "<workers.echo.EchoFactory on 9002>",
    ]


def test_output_and_user_group(tmp_path) -> None:
    done = mktap(
        tmp_path, "-o", "custom.tap", "-u", "65534", "-g", "65534", "daytime", "-p", "8013"
    )
    assert done.returncode == 0, done.stderr
    app = tapfile.load(str(tmp_path / "custom.tap"))
    assert (app.uid, app.gid) == (65534, 65534) and app.ports[0].port == 8013


def test_list_names_each_tap_with_its_summary(tmp_path) -> None:
    done = mktap(tmp_path, "--list")
    assert done.returncode == 0
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert lines["echo"].startswith("Echo server")
    assert lines["daytime"].startswith("Daytime server")


def test_tap_help_shows_usage_message_and_options(tmp_path) -> None:
    done = mktap(tmp_path, "echo", "--help")
    assert done.returncode == 0
    assert "Usage: mktap [mktap options] echo [echo options]" in done.stdout
    assert "sends back every byte" in done.stdout and "--port" in done.stdout
    assert not (tmp_path / "echo.tap").exists()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["echo", "--port", "notanumber"], "Usage Error: Parameter type enforcement failed"),
        (["echo", "--port", "70000"], "Usage Error: Parameter type enforcement failed"),
        (["echo", "--nosuchoption"], "Usage Error: option --nosuchoption not recognized"),
        (["daytime", "--port", "x"], "Usage Error: port must be a number"),
    ],
)
def test_bad_tap_options_exit_2_with_a_usage_error_line(tmp_path, args, error) -> None:
    done = mktap(tmp_path, *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(error)
    assert not list(tmp_path.iterdir())


def test_unknown_tap_exits_non_zero_naming_it(tmp_path) -> None:
    done = mktap(tmp_path, "nosuchtap")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "mktap: no tap module named 'nosuchtap' (mktap --list shows the known ones)"
    )


def test_a_module_that_is_not_a_tap(tmp_path) -> None:
    done = mktap(tmp_path, "json")
    assert done.returncode == 1 and "json is not a tap module" in done.stderr


def test_append_to_a_bad_file_or_a_taken_port(tmp_path) -> None:
    (tmp_path / "junk.tap").write_bytes(b"junk")
    done = mktap(tmp_path, "--append", "junk.tap", "echo")
    assert done.returncode == 1 and "not a forkd tap file" in done.stderr
    assert (tmp_path / "junk.tap").read_bytes() == b"junk"
    mktap(tmp_path, "echo", "--port", "9001")
    done = mktap(tmp_path, "--append", "echo.tap", "echo", "--port", "9001")
    assert done.returncode == 1 and "tcp:9001 is already a port" in done.stderr


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
    env_cmd = [
        sys.executable,
        "-c",
        "import sys; sys.path.insert(0, '.'); from forkd.cli.mktap import main; "
        "sys.exit(main(sys.argv[1:]))",
        "seedtap",
        "--port",
        "9011",
        "--shout",
        "-w",
        "twisted",
    ]
    done = subprocess.run(env_cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        app = tapfile.load(str(tmp_path / "seedtap.tap"))
    finally:
        sys.path.remove(str(tmp_path))
    (port,) = app.ports
    assert port.port == 9011 and port.factory.who == "TWISTED"
