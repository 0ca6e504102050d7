"""The master's lifecycle under adversarial timing, with real processes on 127.0.0.1.

Each test overlaps two things the master must keep apart: a reload with a stop, a reload
with another reload, HUPs faster than a reload, a crash loop with control commands. The
assertions are about the end state (one generation, every client answered, no orphan
workers, no leaked descriptors or zombies), never about timing.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import threading
import time
from typing import Any

import probetap
import psutil
import pytest

from forkd.control.client import ControlError, request
from forkd.testing import RunningForkd, free_port, wait_for
from tests import TAP_MODULES_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def zombies(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            pass
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def steady_fds(pid: int, readings: int = 5) -> list[str]:
    """The master's descriptors once the same set is seen `readings` polls in a row."""
    seen: list[list[str]] = []

    def steady() -> list[str] | None:
        seen.append(fd_targets(pid))
        recent = seen[-readings:]
        return (
            recent[0] if len(recent) == readings and all(r == recent[0] for r in recent) else None
        )

    return list(wait_for(steady, message="a steady set of master descriptors"))


def fd_targets(pid: int) -> list[str]:
    """What each descriptor of `pid` points at, for a failure message worth reading."""
    targets = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        with contextlib.suppress(OSError):  # closed while we looked
            targets.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return targets


def gone(pids: set[int]) -> bool:
    return not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids
    )


def call_in_thread(ctl: str, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start a control request in a thread; the dict gets "result" or "error" when answered."""
    answer: dict[str, Any] = {}

    def run() -> None:
        try:
            answer["result"] = request(ctl, command, args, timeout=30)
        except (ControlError, OSError) as error:
            answer["error"] = str(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    answer["thread"] = thread
    return answer


def test_stop_while_a_reload_validates_stops_instead_of_re_executing(
    tmp_path: pathlib.Path,
) -> None:
    """TERM right after HUP: the validator finishes while the workers drain. The master
    must not exec a new image (which would forget the stop and serve again)."""
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    forkd = RunningForkd(tap, "--graceful-timeout", "1", workers=1, extra_paths=[TAP_MODULES_DIR])
    with forkd:
        [worker] = forkd.wait_workers(1)
        blocker = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert probetap.request(blocker, "pid") == str(worker)  # accepted by the worker
        blocker.sendall(b"block\n")  # the worker drains for graceful-timeout + KILL_GRACE
        forkd.signal(signal.SIGHUP)
        forkd.signal(signal.SIGTERM)
        assert forkd.process is not None
        code = forkd.process.wait(30)
        blocker.close()
        assert code == 0, forkd.log()[-3000:]
        assert "re-executing" not in forkd.log()
        assert gone({worker})


def test_ten_hups_in_a_row_converge_on_one_generation(tmp_path: pathlib.Path) -> None:
    """HUPs sent back to back, some landing while the master re-executes: it survives,
    ends with exactly the target workers of one generation, and leaks nothing."""
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=2, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(2)
        # one reload first, so the baseline has whatever a re-exec'd image keeps open
        request(ctl, "reload", timeout=30)
        second = forkd.wait_workers(2, exclude=first)
        # the old generation reaped and the reload's client gone: nothing transient counted
        wait_for(
            lambda: gone(first) and len(children(forkd.pid)) == 2,
            message="the first generation reaped",
        )
        baseline_fds = steady_fds(forkd.pid)  # the reload's client socket closes lazily
        baseline = len(baseline_fds)
        for _ in range(10):
            forkd.signal(signal.SIGHUP)
        # then keep HUPping, so some land while the master is between images (execve
        # resets the handlers): passing wall time is the point of this loop
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and forkd.log().count("re-executing") < 4:
            assert forkd.process is not None and forkd.process.poll() is None, (
                f"the master died: {forkd.log()[-2000:]}"
            )
            forkd.signal(signal.SIGHUP)
            time.sleep(0.002)
        assert forkd.process is not None

        def settled() -> dict[str, Any] | None:
            assert forkd.process is not None and forkd.process.poll() is None, forkd.log()[-3000:]
            try:
                status = request(ctl, "status", timeout=5)
            except (ControlError, OSError):
                return None
            generations = {w["generation"] for w in status["workers"]}
            workers = forkd.worker_pids()
            if (
                len(status["workers"]) == 2
                and len(generations) == 1
                and len(workers) == 2
                and not workers & second
                and not zombies(forkd.pid)
            ):
                return status
            return None

        status = wait_for(settled, timeout=40, message="one generation of 2 workers")
        assert {w["pid"] for w in status["workers"]} == forkd.worker_pids()
        assert probetap.ask(port, "pid") in {str(w["pid"]) for w in status["workers"]}
        try:
            wait_for(lambda: fd_count(forkd.pid) == baseline, message="fd count")
        except AssertionError:
            raise AssertionError(
                f"master fds: was {baseline_fds}, now "
                f"{fd_targets(forkd.pid)}\n{forkd.log()[-3000:]}"
            ) from None
        assert len(os.listdir(f"/proc/{forkd.pid}/task")) == 1
        assert len(children(forkd.pid)) == 2


def test_reload_while_a_reload_runs_answers_both_clients(tmp_path: pathlib.Path) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=2, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(2)
        one = call_in_thread(ctl, "reload")
        two = call_in_thread(ctl, "reload")
        one["thread"].join(40)
        two["thread"].join(40)
        answers = [one, two]
        assert all("result" in a or "error" in a for a in answers), answers
        assert any("result" in a for a in answers), answers
        refused = [a["error"] for a in answers if "error" in a]
        assert all("in progress" in text for text in refused), refused
        forkd.wait_workers(2, exclude=first)


def test_stop_during_a_restart_rollout_answers_the_client_and_leaves_no_worker(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=2, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(2)
        # the new generation never gets ready: the rollout is still running at the stop
        request(ctl, "shell", {"source": "application.ports[0].factory.hang = True"})
        restart = call_in_thread(ctl, "restart")
        wait_for(
            lambda: len(forkd.worker_pids()) == 4 or "error" in restart,
            message="new generation forked",
        )
        all_workers = forkd.worker_pids() | first
        stop = call_in_thread(ctl, "stop", {"graceful": True})
        stop["thread"].join(30)
        restart["thread"].join(30)
        assert forkd.process is not None
        # well before --graceful-timeout (30 s): the booting ones have nothing to drain
        assert forkd.process.wait(15) == 0, forkd.log()[-3000:]
        assert not restart["thread"].is_alive()
        assert restart.get("error") == "the master is stopping", restart
        assert gone(all_workers)


def test_crash_loop_after_boot_backs_off_and_control_still_answers(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    flag = tmp_path / "crash"
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port, crash_flag=str(flag))
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, workers=1, extra_paths=[TAP_MODULES_DIR]) as forkd:
        [worker] = forkd.wait_workers(1)
        flag.touch()
        os.kill(worker, signal.SIGKILL)
        delays = []

        def failures(count: int) -> dict[str, Any] | None:
            status = request(ctl, "status", timeout=5)
            backoff = status["backoff"]
            return status if backoff["failures"] >= count else None

        for count in (2, 3, 4):
            status = wait_for(
                lambda c=count: failures(c),
                timeout=15,
                message=f"{count} failures: {forkd.log()[-2000:]}",
            )
            delays.append(status["backoff"]["next_spawn_in"])
            assert status["backoff"]["next_spawn_in"] <= 30.0
        assert request(ctl, "scale", {"spec": "1"}, timeout=5) is not None
        assert max(delays) > 0.5  # the delay grows past the base
        flag.unlink()
        forkd.wait_workers(1, exclude={worker}, timeout=20)
        assert probetap.ask(port, "pid") in {str(p) for p in forkd.worker_pids()}
        assert not zombies(forkd.pid)


def test_a_stuck_draining_worker_is_still_killed_after_a_second_reload(
    tmp_path: pathlib.Path,
) -> None:
    """The old generation drains with a deadline (graceful timeout, then SIGKILL). A reload
    that re-executes the master meanwhile must carry that deadline over, not forget it."""
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(
        tap, "--graceful-timeout", "1", workers=1, extra_paths=[TAP_MODULES_DIR]
    ) as forkd:
        [stuck] = forkd.wait_workers(1)
        blocker = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert probetap.request(blocker, "pid") == str(stuck)
        blocker.sendall(b"block\n")  # stuck for 120 s: only SIGKILL ends it
        request(ctl, "reload", timeout=30)  # `stuck` now drains, SIGKILL due in ~6 s
        request(ctl, "reload", timeout=30)  # the master re-executes while it drains
        wait_for(
            lambda: gone({stuck}),
            timeout=20,
            message=f"the stuck worker killed: {forkd.log()[-2000:]}",
        )
        blocker.close()
        assert "did not exit: SIGKILL" in forkd.log()
        forkd.wait_workers(1)


def test_new_generation_silent_at_boot_rolls_the_restart_back(tmp_path: pathlib.Path) -> None:
    """A new worker that never gets ready is aborted at --timeout; that is a failure
    before ready like any other, so the rollout rolls back and the client hears why."""
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    ctl = str(tmp_path / "probe.ctl")
    with RunningForkd(tap, "--timeout", "2", workers=2, extra_paths=[TAP_MODULES_DIR]) as forkd:
        first = forkd.wait_workers(2)
        request(ctl, "shell", {"source": "application.ports[0].factory.hang = True"})
        with pytest.raises(ControlError, match="silent"):
            request(ctl, "restart", timeout=20)
        assert request(ctl, "status", timeout=5)["generation"] == 1

        def old_generation_only() -> bool:
            workers = request(ctl, "status", timeout=5)["workers"]
            return len(workers) == 2 and all(
                w["generation"] == 1 and w["state"] == "ready" for w in workers
            )

        wait_for(old_generation_only, timeout=15, message="the new generation gone")
        assert forkd.worker_pids() == first
        assert probetap.ask(port, "pid") in {str(pid) for pid in first}
