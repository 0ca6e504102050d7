"""`--reload` end to end: a real `forkd serve` / `forkd start`, its real watcher process,
files edited in tmp_path, HTTP clients on 127.0.0.1 all the while.

The development reload is the production reload, so what `forkctl reload` promises holds
for a save: the new code serves, nothing is dropped meanwhile, a syntax error rolls back
with the old code serving on, and the watcher never outlives its master."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal

import psutil
import pytest

from forkd.testing import RunningForkd, forkctl, free_port, make_tap, mktap, wait_for
from tests.loads import KeepAliveLoad
from tests.webserving import forkd_serve, get

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"{reply}\\n"]
"""
RELOADED = 30.0  # seconds a save may take to be served (a reload takes well under one)


def write_app(directory: pathlib.Path, reply: str) -> None:
    (directory / "app.py").write_text(APP.format(reply=reply))


def reply(port: int) -> bytes | None:
    """The body served on `port` now, or None while nothing answers."""
    try:
        return get(port).body
    except OSError:
        return None


def watchers_of(master: int) -> list[psutil.Process]:
    """The master's live source watcher processes (by their title)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(master).children():
            with contextlib.suppress(psutil.Error):
                if "forkd: watcher" in " ".join(child.cmdline()) and child.status() != "zombie":
                    found.append(child)
    return found


def watcher_of(master: int) -> psutil.Process | None:
    """The master's one source watcher; AssertionError if it has several."""
    found = watchers_of(master)
    assert len(found) <= 1, f"{len(found)} watchers: {found}"
    return found[0] if found else None


def gone(process: psutil.Process) -> bool:
    """Exited (a zombie waits for whoever reaps orphans, when the master could not)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(
    "preload",
    # the syntax error is refused by the reload's validator (which imports a preloaded
    # application), or rolled back when the new workers fail to import it
    [[], ["--no-preload"]],
    ids=["preload", "no-preload"],
)
def test_serve_reload_serves_each_save_drops_nothing_and_survives_a_syntax_error(
    tmp_path: pathlib.Path, preload: list[str]
) -> None:
    write_app(tmp_path, "one")
    port = free_port()
    log = tmp_path / "forkd.log"

    def tail() -> str:
        return log.read_text()[-4000:] if log.exists() else "(no log)"

    options = ["--bind", f"127.0.0.1:{port}", "-w", "2", "-l", str(log), "--reload", *preload]
    with forkd_serve(tmp_path, "app:app", *options) as process:
        wait_for(lambda: reply(port) == b"one\n", 30, message="forkd serve to answer")
        watcher = wait_for(lambda: watcher_of(process.pid), 15, message="the watcher")
        wait_for(lambda: "watching" in tail(), 15, message=lambda: f"watching: {tail()}")

        with KeepAliveLoad(port, clients=4, expect=lambda body: True, keep_bodies=True) as load:
            wait_for(lambda: load.ok > 50, message="load running")
            # same length as "one": seen although its bytecode looks up to date
            write_app(tmp_path, "two")
            wait_for(lambda: reply(port) == b"two\n", RELOADED, message=lambda: tail())
            served = load.ok
            wait_for(lambda: load.ok > served + 50, message="load after the reload")
        assert load.errors == [], (load.errors[:5], tail())
        assert load.bodies == {b"one\n", b"two\n"}
        print(f"\n--reload under load: {load.ok} requests, {len(load.errors)} failed")

        (tmp_path / "app.py").write_text("def app(environ, start_response:\n")
        wait_for(
            lambda: "forkd.watcher: reload failed" in tail(),
            RELOADED,
            message=lambda: f"the failure logged: {tail()}",
        )
        [line] = [ln for ln in tail().splitlines() if "forkd.watcher: reload failed" in ln]
        assert "SyntaxError" in line and "(app.py, line 1)" in line, line
        assert reply(port) == b"two\n", "the old code serves on"
        assert process.poll() is None
        assert watchers_of(process.pid) == [watcher], "the same watcher, across three reloads"

        write_app(tmp_path, "three")
        wait_for(lambda: reply(port) == b"three\n", RELOADED, message=lambda: tail())
    # forkd_serve sent TERM and saw exit 0
    wait_for(lambda: gone(watcher), 10, message="the watcher to end with its master")


def test_start_reload_watches_the_tap_and_ends_with_forkctl_stop(
    tmp_path: pathlib.Path,
) -> None:
    write_app(tmp_path, "one")
    port, other = free_port(), free_port()
    tap = make_tap(
        tmp_path / "app.tap", "wsgi", "--app", "app:app", "--port", str(port),
        "--pythonpath", str(tmp_path),
    )  # fmt: skip
    ctl = str(tmp_path / "app.ctl")
    with RunningForkd(tap, "--reload", workers=1) as forkd:
        watcher = wait_for(lambda: watcher_of(forkd.pid), 15, message="the watcher")
        wait_for(lambda: "watching" in forkd.log(), 15, message=forkd.log)
        write_app(tmp_path, "two")
        wait_for(lambda: reply(port) == b"two\n", RELOADED, message=forkd.log)
        # the tap itself: a port appended to it is served after the reload it causes
        done = mktap("--append", tap, "hello", "--port", str(other))
        assert done.returncode == 0, done.stderr
        wait_for(lambda: reply(other) is not None, RELOADED, message=forkd.log)
        assert reply(port) == b"two\n"
        stopped = forkctl(ctl, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert forkd.process is not None
        assert forkd.process.wait(30) == 0, forkd.log()
    wait_for(lambda: gone(watcher), 10, message="the watcher to end with its master")


def test_the_watcher_ends_by_itself_when_its_master_is_killed(tmp_path: pathlib.Path) -> None:
    write_app(tmp_path, "one")
    port = free_port()
    tap = make_tap(
        tmp_path / "app.tap", "wsgi", "--app", "app:app", "--port", str(port),
        "--pythonpath", str(tmp_path),
    )  # fmt: skip
    with RunningForkd(tap, "--reload", workers=1) as forkd:
        watcher = wait_for(lambda: watcher_of(forkd.pid), 15, message="the watcher")
        workers = [psutil.Process(pid) for pid in forkd.worker_pids()]
        try:
            forkd.signal(signal.SIGKILL)  # no stop, no shutdown: nobody tells the watcher
            wait_for(lambda: gone(watcher), 10, message="the orphaned watcher to end")
        finally:
            for worker in workers:
                with contextlib.suppress(psutil.Error):
                    os.kill(worker.pid, signal.SIGKILL)
