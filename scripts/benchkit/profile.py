"""Where a forkd worker spends its time under wrk load: py-spy, summarised as top frames.

py-spy samples the running processes from outside (no code change, no cProfile overhead
distorting the hot path); `--subprocesses` follows a master's workers, and idle samples
(a worker waiting in epoll) are dropped by py-spy itself, so the percentages are shares of
the time the server was busy. The raw (collapsed-stack) output is reduced to two lists:
self time (the line on top of the stack) and inclusive time (the function anywhere in it,
lines merged: a function's share is what a change to it could win).

Without `--native`, time spent in C (uvloop, httptools, the write and read system calls)
is charged to the Python line that called into it: a line like `transport.write(...)` at
the top of the self-time list means the kernel's send, not Python. Frames present in
(nearly) every sample of their thread -- the entry point, the master's fork, the worker's
run loop; a pool thread's bootstrap and work loop -- are the common trunk and are left out
of the inclusive list: they say nothing about where. The trunk is found per root frame
(the main thread's `<module>`, a pool thread's `Thread._bootstrap`), so a threaded server
(WSGI) does not list its main thread's trunk at the main thread's share.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    """Top frames by self and by inclusive share of the busy samples."""

    samples: int
    self_time: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]

    def lines(self) -> list[str]:
        out = [f"py-spy: {self.samples} busy samples"]
        out.append("top frames by self time:")
        out += [f"  {share:5.1f}%  {frame}" for frame, share in self.self_time]
        out.append("top frames by inclusive time:")
        out += [f"  {share:5.1f}%  {frame}" for frame, share in self.inclusive]
        return out


def function_of(frame: str) -> str:
    """`f (path.py:12)` -> `f (path.py)`: py-spy names frames by line, inclusive wants functions."""
    name, sep, where = frame.rpartition(" (")
    if not sep or not where.endswith(")"):
        return frame
    path, colon, line = where[:-1].rpartition(":")
    return f"{name} ({path})" if colon and line.isdigit() else frame


TRUNK_SHARE = 99.0  # inclusive share at or above which a frame is trunk, not a hot spot


def summarise(collapsed: str, top: int = 15) -> Profile:
    """Reduce py-spy's raw output (`frame;frame;... COUNT` per line) to top frames.

    The `process ...` and `thread ...` root frames that --subprocesses and threads add are
    dropped: they name who, not where.
    """
    self_counts: Counter[str] = Counter()
    root_samples: Counter[str] = Counter()  # root frame -> its samples
    under_root: dict[str, Counter[str]] = {}  # root frame -> each function's samples
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        root = function_of(frames[0])
        root_samples[root] += count
        functions = under_root.setdefault(root, Counter())
        for function in {function_of(frame) for frame in frames}:
            functions[function] += count
    if total == 0:
        return Profile(0, [], [])
    inclusive_counts: Counter[str] = Counter()
    for root, functions in under_root.items():
        for function, n in functions.items():
            if 100.0 * n / root_samples[root] < TRUNK_SHARE:
                inclusive_counts[function] += n

    def shares(counts: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, 100.0 * n / total) for frame, n in counts.most_common(top)]

    return Profile(total, shares(self_counts), shares(inclusive_counts))


def record_command(
    py_spy: Path, pid: int, duration: int, output: Path, native: bool = False
) -> list[str]:
    """py-spy's command line. `native` adds the C frames (what a Python-only profile smears
    over the lines that call into C: the cycle collector's `gc_collect_main`, uvloop's
    write); py-spy can only unwind them with the process paused, so it runs blocking then,
    which slows the server under test: read its shares, not its rate."""
    argv = [
        str(py_spy), "record", "--pid", str(pid), "--subprocesses",
        "--duration", str(duration), "--rate", "250", "--format", "raw",
        "--output", str(output),
    ]  # fmt: skip
    return [*argv, "--native", "--gil"] if native else [*argv, "--nonblocking"]


def record(
    py_spy: Path, pid: int, duration: int, output: Path, native: bool = False
) -> subprocess.Popen[bytes]:
    """Start py-spy on `pid` and its children for `duration` seconds (caller waits)."""
    return subprocess.Popen(
        record_command(py_spy, pid, duration, output, native),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
