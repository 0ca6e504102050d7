"""A new transport type (the seed's port interface, no `serve`) run by the real master:
served by every worker, kept across a reload, added live with forkctl append."""

from __future__ import annotations

import pathlib

import pytest
import udptap

from forkd import tapfile
from forkd.app import Application
from forkd.testing import RunningForkd, forkctl
from tests import TAP_MODULES_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_seed_style_udp_port_through_start_reload_and_append(tmp_path: pathlib.Path) -> None:
    port = free_udp_port()
    app = Application("udp")
    factory = udptap.PidEchoFactory()
    app.addPort(udptap.UDPPort(port, factory))
    app.tapfile = str(tmp_path / "udp.tap")
    app.save()
    ctl = str(tmp_path / "udp.ctl")
    with RunningForkd(app.tapfile, workers=2, extra_paths=[TAP_MODULES_DIR]) as forkd:
        workers = forkd.wait_workers(2)
        data, pid = udptap.ask(port, b"hello")
        assert data == b"hello" and pid in workers

        done = forkctl(ctl, "reload")
        assert done.returncode == 0, done.stderr + forkd.log()[-2000:]
        new = forkd.wait_workers(2, exclude=workers)
        assert udptap.ask(port, b"after reload")[1] in new  # the same socket, adopted

        added = free_udp_port()
        done = forkctl(ctl, "append", "udptap", "--port", str(added))
        assert done.returncode == 0, done.stderr + forkd.log()[-2000:]
        assert forkd.worker_pids() == new  # live: no worker restarted
        answered = {udptap.ask(added, b"x")[1] for _ in range(50)}
        assert answered <= new
        status = forkctl(ctl, "status").stdout
        assert f"udp:127.0.0.1:{added}" in status and f"udp:127.0.0.1:{port}" in status
    saved = tapfile.load(app.tapfile)  # append also wrote the tap, as mktap --append would
    assert [p.key for p in saved.ports] == [f"udp:127.0.0.1:{port}", f"udp:127.0.0.1:{added}"]
