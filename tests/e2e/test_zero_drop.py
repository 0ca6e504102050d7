"""Zero dropped requests for keep-alive HTTP clients across reloads and restarts.

nginx drops every idle keep-alive connection on reload, and a client that was sending its
next request on one sees an error. forkd's draining workers answer that request with
`Connection: close` instead. Real master, real workers, real HTTP clients on 127.0.0.1.
"""

from __future__ import annotations

import pathlib

import pytest

from forkd.app import Application
from forkd.ports import TCPPort
from forkd.testing import RunningForkd, forkctl, free_port, wait_for
from forkd.web import server
from forkd.web.hello import Hello
from tests.loads import KeepAliveLoad

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_keep_alive_clients_lose_nothing_across_reloads_and_restarts(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    app = Application("hello")
    app.addPort(TCPPort(port, server.Site(Hello()), interface="127.0.0.1"))
    app.tapfile = str(tmp_path / "hello.tap")
    app.save()
    ctl = str(tmp_path / "hello.ctl")
    with RunningForkd(app.tapfile, workers=2) as forkd:
        workers = forkd.wait_workers(2)
        with KeepAliveLoad(port) as load:
            wait_for(lambda: load.ok > 200, message="load running")
            for command in ["reload", "restart"] * 3:
                before = load.reconnects
                done = forkctl(ctl, command)
                assert done.returncode == 0, done.stderr + forkd.log()[-3000:]
                workers = forkd.wait_workers(2, exclude=workers, timeout=30)
                # every client was moved to the new generation by a Connection: close
                wait_for(
                    lambda b=before: load.reconnects >= b + 8,
                    timeout=30,
                    message="clients told to reconnect",
                )
            served = load.ok
            wait_for(lambda: load.ok > served + 200, message="load after the last restart")
        assert load.errors == [], (load.errors[:5], forkd.log()[-6000:])
        print(
            f"\nkeep-alive load across 3 reloads + 3 restarts: {load.ok} requests, "
            f"{load.reconnects} graceful reconnects, {len(load.errors)} failed"
        )
