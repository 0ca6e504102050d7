"""The master's shutdown: each cleanup step runs even when an earlier one fails."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from forkd.app import Application
from forkd.ports import TCPPort
from forkd.protocol import Factory
from forkd.supervisor.master import Master, MasterConfig


class PidFile:
    def __init__(self) -> None:
        self.released = False

    def release(self) -> None:
        self.released = True


def test_a_port_that_fails_to_unserve_still_closes_and_the_pidfile_is_released(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    application = Application("shut")
    application.tapfile = str(tmp_path / "shut.tap")
    application.ports.append(TCPPort(0, Factory(), interface="127.0.0.1"))
    pidfile = PidFile()
    master = Master(application, MasterConfig(workers=0, save_on_stop=False), pidfile=pidfile)
    master.bind_ports()
    port = application.ports[0]
    assert port.socket is not None

    def broken(port: Any) -> None:
        raise RuntimeError("unserve broke")

    monkeypatch.setattr(master.master_ports, "unserve", broken)
    with caplog.at_level(logging.ERROR, logger="forkd"):
        master.shutdown()
    assert port.socket is None  # closed although the step before it failed
    assert pidfile.released
    assert any("cannot stop serving" in r.getMessage() for r in caplog.records)
