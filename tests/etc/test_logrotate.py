"""etc/logrotate.d/forkd run by the real logrotate against a running forkd: after the
rotation the master writes to a new log (`forkctl reopen` in postrotate), not the old one.

The shipped file's paths (/var/log/forkd, /srv/forkd, /usr/local/bin/forkctl) are replaced
with ones in tmp_path; everything else (the directives, the postrotate script) is as shipped.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import socket
import subprocess

import pytest

from forkd.testing import RunningForkd, free_port, make_tap, wait_for
from tests.etc.installed import install_commands, repo_file, script_env

LOGROTATE_CONF = repo_file("etc/logrotate.d/forkd")


def postrotate_script() -> str:
    text = LOGROTATE_CONF.read_text()
    found = re.search(r"^\s*postrotate\n(.*?)^\s*endscript", text, re.S | re.M)
    assert found, "no postrotate ... endscript in etc/logrotate.d/forkd"
    return found.group(1)


def test_postrotate_is_valid_posix_shell(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "postrotate.sh"
    script.write_text("#!/bin/sh\n" + postrotate_script())
    assert "forkctl" in script.read_text() and "reopen" in script.read_text()
    done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck") is not None:
        done = subprocess.run(
            ["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout


def local_conf(tmp_path: pathlib.Path, srv: pathlib.Path, forkctl: str) -> pathlib.Path:
    text = LOGROTATE_CONF.read_text()
    varlog = tmp_path / "varlog"
    varlog.mkdir()
    for shipped, here in (
        ("/usr/local/bin/forkctl", forkctl),
        ("/var/log/forkd", str(varlog)),
        ("/srv/forkd", str(srv)),
    ):
        assert shipped in text, f"etc/logrotate.d/forkd no longer names {shipped}"
        text = text.replace(shipped, here)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    conf.chmod(0o644)  # logrotate refuses a group- or world-writable configuration
    return conf


@pytest.mark.e2e
def test_logrotate_rotates_and_forkd_reopens_its_log(tmp_path: pathlib.Path) -> None:
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed (Debian package logrotate; .ci/run has it)")
    srv = tmp_path / "srv"
    srv.mkdir()
    commands = install_commands(tmp_path / "bin")
    conf = local_conf(tmp_path, srv, commands["forkctl"])
    tap = make_tap(srv / "app.tap", "echo", "--port", str(free_port()))
    log = srv / "app.log"
    # a socket whose master was killed: reported, skipped, and the rotation still succeeds
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(srv / "gone.ctl"))
    stale.close()

    with RunningForkd(tap, "-l", str(log), workers=1) as forkd:
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 10, message="a first log line")
        done = subprocess.run(
            ["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
            env=script_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "gone.ctl did not reopen" in done.stderr
        rotated = srv / "app.log.1"  # delaycompress: the newest rotation stays plain
        assert rotated.exists()
        # forkctl reopen waited for the master's answer: the new file is there at once
        assert log.exists(), f"forkd still writes to {rotated}: {forkd.log()}"
        wait_for(
            lambda: "log files reopened" in log.read_text(),
            10,
            message=lambda: f"the reopen logged in the new file: {log.read_text()!r}",
        )
        assert "log files reopened" not in rotated.read_text()
