"""A log that cannot be written never stops the service (issue 9, item 1).

The log file lives on a small tmpfs the test mounts (root only) and then fills; a reload
(SIGHUP) must still re-execute the master and bring up the new generation, and the master
must keep running."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import signal
import subprocess
import tempfile
from collections.abc import Iterator

import probetap
import pytest

from forkd.supervisor import reexec
from forkd.testing import RunningForkd, free_port
from tests import TAP_MODULES_DIR


@pytest.fixture
def small_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: pathlib.Path) -> None:
    """Write until the disk says it is full, to the last byte."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"x" * size)
        with pytest.raises(OSError) as full:
            os.write(fd, b"x")
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC


@pytest.mark.e2e
def test_a_reload_with_a_full_log_disk_keeps_serving(
    tmp_path: pathlib.Path, small_disk: pathlib.Path
) -> None:
    port = free_port()
    tap = probetap.make_tap(str(tmp_path / "probe.tap"), port)
    log = small_disk / "forkd.log"
    with RunningForkd(tap, "-l", str(log), workers=2, extra_paths=[TAP_MODULES_DIR]) as forkd:
        old = forkd.wait_workers(2)
        fill(small_disk)
        for _ in range(2):
            forkd.signal(signal.SIGHUP)
            new = forkd.wait_workers(2, exclude=old, timeout=30)
            assert probetap.ask(port, "pid") in {str(pid) for pid in new}
            old = new
        assert forkd.process is not None and forkd.process.poll() is None


def test_a_state_file_that_cannot_be_written_fails_the_reload_and_leaves_nothing(
    small_disk: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full /tmp (one root filesystem with the log): the re-exec is refused with the
    reason, the signals are unblocked again, and no half-written state file is left."""
    fill(small_disk)
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk))
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    error = reexec.exec_image({"application": "x" * 100000}, [], [], {signal.SIGHUP})
    assert "No space left on device" in error
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    assert not list(small_disk.glob("forkd-reexec-*"))
