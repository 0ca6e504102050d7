"""A graceful stop refuses new connections at once while accepted ones finish."""

from __future__ import annotations

import pathlib
import signal
import socket

import probetap
import pytest

from forkd.testing import RunningForkd, free_port, refused, wait_for
from tests import TAP_MODULES_DIR


@pytest.mark.e2e
def test_stop_refuses_new_connections_while_the_drain_runs(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    with RunningForkd(
        tap, "--graceful-timeout", "30", workers=1, extra_paths=[TAP_MODULES_DIR]
    ) as forkd:
        held = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            assert probetap.request(held, "req 1").startswith("ok 1")
            forkd.signal(signal.SIGTERM)
            # refused long before the 30 s drain could end, while the held one still works
            wait_for(lambda: refused(port), 10, message="new connections refused")
            assert forkd.process is not None and forkd.process.poll() is None
            assert probetap.request(held, "req 2").startswith("ok 2")
        finally:
            held.close()
        assert forkd.stop() == 0
