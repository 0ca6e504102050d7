"""Real applications reloaded under load: 0 failed requests, and WebSockets of the draining
generation closed with 1012 (reconnect) or, when the server stops, 1001: never a bare 1006.
"""

from __future__ import annotations

import json
import pathlib
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from forkd.testing import RunningForkd, forkctl, free_port, make_tap, wait_for
from tests.loads import KeepAliveLoad

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RELOADS = 10

FASTAPI_APP = """
import os
import fastapi

app = fastapi.FastAPI()


@app.get("/")
async def index():
    return {"pid": os.getpid()}


@app.websocket("/ws")
async def echo(sock: fastapi.WebSocket):
    await sock.accept()
    while True:
        message = await sock.receive()
        if message["type"] == "websocket.disconnect":
            return
        await sock.send_text("%d:%s" % (os.getpid(), message["text"]))
"""


class WebSocketClient:
    """One client that keeps a conversation going: when the server closes, it notes the
    code and reconnects (within a deadline), as a browser app would."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.exchanged = 0
        self.codes: list[int | None] = []
        self.errors: list[str] = []
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            deadline = time.monotonic() + 20
            try:
                client = connect(self.url, open_timeout=10)
            except OSError as error:  # between generations a connect may be refused: retry
                if time.monotonic() > deadline:
                    self.errors.append(f"reconnect: {error}")
                    return
                continue
            with client:
                while not self._stop.is_set():
                    try:
                        client.send(str(self.exchanged))
                        pid, _, echoed = client.recv(10).partition(":")
                    except ConnectionClosed:
                        self.codes.append(client.close_code)
                        break
                    except Exception as error:  # anything else is a failure of the test
                        self.errors.append(f"{type(error).__name__}: {error}")
                        return
                    if echoed != str(self.exchanged):
                        self.errors.append(f"sent {self.exchanged}, got {echoed}")
                    self.pids.add(int(pid))
                    self.exchanged += 1

    def __enter__(self) -> WebSocketClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(20)


def test_fastapi_reloads_under_load_with_no_failed_request(tmp_path: pathlib.Path) -> None:
    (tmp_path / "wsapp.py").write_text(FASTAPI_APP)
    port = free_port()
    tap = make_tap(
        tmp_path / "wsapp.tap",
        "asgi",
        *("--app", "wsapp:app", "--port", str(port), "--pythonpath", str(tmp_path)),
        *("--websocket-drain", "0.2"),
    )
    ctl = str(tmp_path / "wsapp.ctl")

    def a_pid(body: bytes) -> bool:
        return isinstance(json.loads(body).get("pid"), int)

    with RunningForkd(tap, workers=2) as forkd:
        workers = forkd.wait_workers(2)
        with (
            KeepAliveLoad(port, clients=4, expect=a_pid) as keep_alive,
            KeepAliveLoad(port, clients=2, expect=a_pid, close=True) as closing,
            WebSocketClient(port) as sockets,
        ):
            wait_for(lambda: keep_alive.ok > 50 and closing.ok > 20, message="load running")
            wait_for(lambda: sockets.exchanged > 20, message="the WebSocket conversing")
            for reload in range(RELOADS):
                done = forkctl(ctl, "reload")
                assert done.returncode == 0, done.stderr + forkd.log()[-3000:]
                workers = forkd.wait_workers(2, exclude=workers, timeout=30)
                wait_for(
                    lambda r=reload: len(sockets.codes) > r, timeout=20, message="a 1012 close"
                )
            exchanged, served = sockets.exchanged, keep_alive.ok
            wait_for(
                lambda: sockets.exchanged > exchanged + 20 and keep_alive.ok > served + 50,
                message="load carrying on after the last reload",
            )
        failed = keep_alive.errors + closing.errors + sockets.errors
        assert failed == [], (failed[:5], forkd.log()[-6000:])
        assert sockets.codes == [1012] * RELOADS, sockets.codes
        assert sockets.pids & workers, "the conversation moved to the new generation"
        print(
            f"\nFastAPI, {RELOADS} reloads under load: {keep_alive.ok} keep-alive and "
            f"{closing.ok} close requests, {len(failed)} failed; {sockets.exchanged} WebSocket "
            f"messages echoed, close codes seen: {sorted(set(sockets.codes))}"
        )

        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as client:
            client.send("last")
            assert client.recv(10).endswith(":last")
            forkd.stop()
            with pytest.raises(ConnectionClosed):
                client.recv(10)
            assert client.close_code == 1001, "the server stopping says going away"
        assert forkd.returncode == 0


def test_django_reloads_under_load_with_no_failed_request(tmp_path: pathlib.Path) -> None:
    from tests.apps.test_django_admin import write_project

    write_project(tmp_path)
    port = free_port()
    app = "project.wsgi:application"
    ctl = str(tmp_path / "wsgi.ctl")

    def login_page(body: bytes) -> bool:
        return b"csrfmiddlewaretoken" in body

    with RunningForkd.serving(tmp_path, app, "--bind", f"127.0.0.1:{port}", workers=2) as forkd:
        workers = forkd.wait_workers(2)
        with (
            KeepAliveLoad(port, clients=3, path="/admin/login/", expect=login_page) as keep_alive,
            KeepAliveLoad(
                port, clients=1, path="/admin/login/", expect=login_page, close=True
            ) as closing,
        ):
            wait_for(lambda: keep_alive.ok > 30 and closing.ok > 10, message="load running")
            for _ in range(RELOADS):
                done = forkctl(ctl, "reload")
                assert done.returncode == 0, done.stderr + forkd.log()[-3000:]
                workers = forkd.wait_workers(2, exclude=workers, timeout=30)
            served = keep_alive.ok
            wait_for(lambda: keep_alive.ok > served + 30, message="load after the last reload")
        failed = keep_alive.errors + closing.errors
        assert failed == [], (failed[:5], forkd.log()[-6000:])
        print(
            f"\nDjango, {RELOADS} reloads under load: {keep_alive.ok} keep-alive and "
            f"{closing.ok} close requests, {len(failed)} failed"
        )
