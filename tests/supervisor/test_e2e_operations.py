"""End-to-end operations: privilege drop with -u/-g, log reopening on USR1 (logrotate)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import tempfile
import urllib.request
from collections.abc import Iterator

import psutil
import pytest

from forkd.app import Application
from forkd.control.client import request
from forkd.ports import TCPPort
from forkd.testing import RunningForkd, free_port, wait_for
from forkd.web import server, static
from workers.echo import EchoFactory

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NOBODY = 65534


@pytest.fixture
def shared_dir() -> Iterator[pathlib.Path]:
    """A directory an unprivileged master can still reach (pytest's tmp is root-only)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="forkd-ops-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def status_as(uid: int, ctl: str) -> int:
    """`forkctl status` as `uid`, in a forked child: a new interpreter as that user could
    not even read a Python installed under /root. 0 when the master answered."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            code = 0 if request(ctl, "status", timeout=10).get("pid") else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_start_as_root_binds_then_runs_master_and_workers_as_the_user(
    shared_dir: pathlib.Path,
) -> None:
    os.chown(shared_dir, NOBODY, NOBODY)  # the master saves its shutdown tap here
    port = free_port()
    app = Application("echo")
    app.addPort(TCPPort(port, EchoFactory(), interface="127.0.0.1"))
    app.tapfile = str(shared_dir / "echo.tap")
    app.save()
    with RunningForkd(app.tapfile, "-u", str(NOBODY), "-g", str(NOBODY), workers=2) as forkd:
        workers = forkd.wait_workers(2)
        for pid in [forkd.pid, *workers]:
            uids, gids = psutil.Process(pid).uids(), psutil.Process(pid).gids()
            assert (uids.real, uids.effective, uids.saved) == (NOBODY,) * 3, pid
            assert (gids.real, gids.effective) == (NOBODY, NOBODY), pid
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
        # the user it runs as controls it (issue 9, item 8): the socket is theirs
        ctl = shared_dir / "echo.ctl"
        assert ctl.stat().st_uid == NOBODY
        assert status_as(NOBODY, str(ctl)) == 0
    assert forkd.returncode == 0, forkd.log()
    assert (shared_dir / "echo-shutdown.tap").exists()


def test_usr1_reopens_the_access_log_after_logrotate(tmp_path: pathlib.Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.txt").write_text("a")
    access_log = tmp_path / "access.log"
    port = free_port()
    site = server.Site(static.File(str(tmp_path / "www")), logPath=str(access_log))
    app = Application("web")
    app.addPort(TCPPort(port, site, interface="127.0.0.1"))
    app.tapfile = str(tmp_path / "web.tap")
    app.save()

    def fetch(path: str) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            assert response.status == 200

    def logged(path: pathlib.Path, marker: str) -> bool:
        return path.exists() and marker in path.read_text()

    with RunningForkd(app.tapfile, workers=1) as forkd:
        fetch("/a.txt?before")
        wait_for(lambda: logged(access_log, "before"), message="first line logged")
        rotated = tmp_path / "access.log.1"
        access_log.rename(rotated)  # what logrotate does, then it sends USR1
        forkd.signal(signal.SIGUSR1)
        wait_for(lambda: access_log.exists(), message="access log reopened")
        fetch("/a.txt?after")
        wait_for(lambda: logged(access_log, "after"), message="second line in the new file")
        assert "after" not in rotated.read_text()
        assert '"GET /a.txt?after HTTP/1.1" 200' in access_log.read_text()
