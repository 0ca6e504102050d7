"""Running wrk and reading its report.

wrk (Debian's, 4.x) is the load generator for every server alike: one thread, 50
keep-alive connections, `--latency` for the percentiles. Its text report is the only
interface it has, so this module parses it, and refuses a report it cannot read rather
than guessing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"
_REQUESTS = re.compile(r"^\s*(\d+) requests in " + _DURATION + r", ([\d.]+)([KMGT]?B) read", re.M)
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)(?:\.0+)?%\s+" + _DURATION, re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


class WrkError(Exception):
    """wrk failed, or printed a report this module cannot read."""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured: throughput, latency percentiles (seconds), errors."""

    requests: int
    duration: float
    requests_per_second: float
    p50: float
    p99: float
    socket_errors: int
    non_2xx: int
    bytes_read: float = 0.0  # responses, headers included (wrk's rounded figure)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seconds(value: str, unit: str) -> float:
    """wrk's `1.23ms` as seconds."""
    return float(value) * _UNITS[unit]


def parse(report: str) -> WrkResult:
    """Read wrk's `--latency` text report; WrkError if a required line is missing."""
    requests = _REQUESTS.search(report)
    rate = _RATE.search(report)
    percentiles = {
        m.group(1): seconds(m.group(2), m.group(3)) for m in _PERCENTILE.finditer(report)
    }
    if requests is None or rate is None or "50" not in percentiles or "99" not in percentiles:
        first = report.strip().splitlines()[:3]
        raise WrkError("unreadable wrk report: " + " | ".join(first))
    errors = _SOCKET_ERRORS.search(report)
    non_2xx = _NON_2XX.search(report)
    return WrkResult(
        requests=int(requests.group(1)),
        duration=seconds(requests.group(2), requests.group(3)),
        requests_per_second=float(rate.group(1)),
        p50=percentiles["50"],
        p99=percentiles["99"],
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        bytes_read=float(requests.group(4)) * _BYTES[requests.group(5)],
    )


def command(url: str, duration: float, connections: int = 50, threads: int = 1) -> list[str]:
    """The wrk command line for one measurement."""
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
        url,
    ]


def available() -> bool:
    return shutil.which("wrk") is not None


def run(url: str, duration: float, connections: int = 50, threads: int = 1) -> WrkResult:
    """Load `url` for `duration` seconds and return what wrk measured.

    The subprocess timeout is wrk's own duration plus a margin, so a wedged wrk cannot
    hang the benchmark.
    """
    argv = command(url, duration, connections, threads)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {duration + 30:.0f}s") from None
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip()
        raise WrkError(f"wrk exited {done.returncode}: {said}")
    return parse(done.stdout)
