"""Results of a benchmark run: the per-server record, the table, the targets, the JSON.

Ratios are read as "how many times better forkd is": `forkd/this` is forkd's requests/s
over this server's, `CPU this/forkd` is this server's CPU per request over forkd's. Both
are above 1 where forkd wins. Ratios only compare servers of the same run, scenario and
worker count, which is the only comparison a shared 2-core machine makes meaningful.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

FORKD = "forkd"


@dataclass
class Measurement:
    """One server, one scenario, one worker count, one round."""

    server: str
    scenario: str
    workers: int
    round: int = 0
    requests_per_second: float = 0.0
    requests: int = 0
    p50: float = 0.0
    p99: float = 0.0
    cpu_seconds: float = 0.0  # user + system, the whole process tree
    cpu_user_seconds: float = 0.0
    bytes_per_request: float = 0.0  # a check that every server sent the same body
    processes: int = 0  # in the server's tree at the end: master + workers, a check on -w
    socket_errors: int = 0
    non_2xx: int = 0
    note: str = ""
    skipped: str = ""  # why it did not run (not installed, no 2-worker mode, failed to start)

    @property
    def ok(self) -> bool:
        return not self.skipped and self.requests > 0

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds * 1e6 / self.requests if self.requests else 0.0

    @property
    def cpu_user_us_per_request(self) -> float:
        return self.cpu_user_seconds * 1e6 / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_us_per_request"] = round(self.cpu_us_per_request, 2)
        data["cpu_user_us_per_request"] = round(self.cpu_user_us_per_request, 2)
        return data


@dataclass(frozen=True)
class Target:
    """The issue's goal: forkd's req/s at least `factor` times `peer`'s in `scenario`."""

    scenario: str
    peer: str
    factor: float


TARGETS = [
    Target("hello", "uvicorn", 1.3),
    Target("hello", "gunicorn", 5.0),
    Target("static", "nginx", 0.7),
]


def median_rounds(measurements: list[Measurement]) -> list[Measurement]:
    """One measurement per (server, scenario, workers): the round with the median req/s.

    The whole median round is kept (not a mix of medians) so that its CPU, latency and
    requests stay consistent with each other. Skipped entries pass through once.
    """
    groups: dict[tuple[str, str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.server, m.scenario, m.workers), []).append(m)
    chosen = []
    for group in groups.values():
        ran = sorted((m for m in group if m.ok), key=lambda m: m.requests_per_second)
        chosen.append(ran[(len(ran) - 1) // 2] if ran else group[0])
    return chosen


def find(
    results: list[Measurement], server: str, scenario: str, workers: int
) -> Measurement | None:
    for m in results:
        if (m.server, m.scenario, m.workers) == (server, scenario, workers) and m.ok:
            return m
    return None


def ratios(m: Measurement, results: list[Measurement]) -> tuple[float | None, float | None]:
    """(forkd req/s / m's, m's CPU per request / forkd's) within m's scenario and workers."""
    forkd = find(results, FORKD, m.scenario, m.workers)
    if forkd is None or not m.ok or m.requests_per_second == 0:
        return None, None
    rate = forkd.requests_per_second / m.requests_per_second
    cpu = m.cpu_us_per_request / forkd.cpu_us_per_request if forkd.cpu_us_per_request else None
    return rate, cpu


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(results: list[Measurement], scenarios: list[str] | None = None) -> str:
    """A Markdown table, grouped by scenario (in `scenarios` order; hello first when not
    given) and worker count, forkd first in each group, the others in the order they ran."""

    def scenario_rank(scenario: str) -> tuple[int, str]:
        if scenarios is None:
            return (scenario != "hello", scenario)
        return (scenarios.index(scenario) if scenario in scenarios else len(scenarios), scenario)

    header = (
        "| scenario | workers | server | req/s | forkd/this | CPU us/req (user+sys) "
        "| CPU this/forkd | p50 ms | p99 ms | note |"
    )
    lines = [header, "|" + "---|" * 10]
    order = sorted(results, key=lambda m: (scenario_rank(m.scenario), m.workers, m.server != FORKD))
    for m in order:
        if not m.ok:
            cells = [m.scenario, str(m.workers), m.server, "-", "-", "-", "-", "-", "-"]
            lines.append("| " + " | ".join(cells) + f" | skipped: {m.skipped} |")
            continue
        rate, cpu = ratios(m, results)
        notes = [m.note] if m.note else []
        if m.non_2xx or m.socket_errors:
            notes.append(f"{m.non_2xx} non-2xx, {m.socket_errors} socket errors")
        cells = [
            m.scenario,
            str(m.workers),
            m.server,
            f"{m.requests_per_second:,.0f}",
            "" if m.server == FORKD else _ratio(rate),
            f"{m.cpu_us_per_request:.1f} ({m.cpu_user_us_per_request:.1f}+"
            f"{m.cpu_us_per_request - m.cpu_user_us_per_request:.1f})",
            "" if m.server == FORKD else _ratio(cpu),
            _ms(m.p50),
            _ms(m.p99),
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(results: list[Measurement], targets: list[Target] | None = None) -> list[str]:
    """One line per target and worker count that both servers ran: met or missed, by how
    much, and the same comparison at equal CPU (requests per CPU-second, the fairer one
    against a server whose own threads, such as granian's Rust runtime, use the second
    core that forkd's single-threaded worker leaves to wrk)."""
    lines = []
    for workers in sorted({m.workers for m in results}):
        for target in TARGETS if targets is None else targets:
            forkd = find(results, FORKD, target.scenario, workers)
            peer = find(results, target.peer, target.scenario, workers)
            if forkd is None or peer is None:
                continue
            rate = forkd.requests_per_second / peer.requests_per_second
            cpu = peer.cpu_us_per_request / forkd.cpu_us_per_request
            verdict = "met" if rate >= target.factor else "MISSED"
            at_equal_cpu = "met" if cpu >= target.factor else "missed"
            lines.append(
                f"{target.scenario} -w{workers}: forkd {rate:.2f}x {target.peer} req/s "
                f"(target >= {target.factor}x): {verdict}; CPU/request ratio {cpu:.2f}x "
                f"(at equal CPU: {at_equal_cpu})"
            )
    return lines


def spread(values: list[float]) -> float:
    """Relative spread (max-min)/median of the rounds, to show how steady a number was."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else 0.0
