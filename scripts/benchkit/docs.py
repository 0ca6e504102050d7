"""The results section a run writes into docs/BENCHMARKS.md (`bench_http.py --docs`).

The section sits between two markers, `<!-- NAME-results:begin ... -->` and
`<!-- NAME-results:end -->`, NAME being the suite's; everything outside them is written by
hand and left alone. The section says what a reader needs to trust or redo the numbers:
the command, the date, the machine and its load before and after, each side's versions,
then one table per scenario, the targets met or missed, and the profile, if one ran.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchkit import report
from benchkit.report import Measurement


def markers(suite: str) -> tuple[str, str]:
    return (
        f"<!-- {suite}-results:begin (written by scripts/bench_http.py --suite {suite} "
        "--docs: edit the script, not this section) -->",
        f"<!-- {suite}-results:end -->",
    )


def _versions_line(found: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in found.items()) or "unknown"


def section(
    document: dict[str, Any],
    results: list[Measurement],
    scenarios: list[str],
    pending: dict[str, str],
) -> str:
    """The Markdown between the markers, from the run's JSON document and its results."""
    machine = document["machine"]
    versions = document["versions"]
    run = document["run"]
    lines = [
        f"Measured {document['date']} with:",
        "",
        "    " + " ".join(document["command"]),
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['platform']}. Load before the run: `{machine['uptime']}`; after: "
        f"`{document['uptime_after']}`.",
        "",
        f"Load: {versions['wrk']}, `{' '.join(document['wrk'])}` (keep-alive), "
        f"{run['warmup']:g} s warm-up then {run['duration']:g} s measured per server, "
        f"median of {run['rounds']} round(s) by req/s; the whole run took "
        f"{document['elapsed_seconds']:.0f} s.",
        "",
        f"forkd: commit {versions['forkd']}, its interpreter's "
        f"{_versions_line(versions['forkd_python'])}.",
        f"Peers (`{versions['peers_venv']}`): {_versions_line(versions['peers'])}.",
    ]
    if document.get("warning"):
        lines += ["", f"**{document['warning']}.**"]
    for scenario in scenarios:
        rows = [m for m in results if m.scenario == scenario]
        if not rows:
            continue
        lines += ["", f"#### {scenario}", "", report.table(rows, scenarios)]
    for scenario, reason in pending.items():
        lines += ["", f"#### {scenario}", "", reason + "."]
    if document["targets"]:
        lines += ["", "Floors:", ""]
        lines += [f"- {line}" for line in document["targets"]]
    if document["profile"]:
        lines += ["", "Profile (py-spy, `--profile`):", ""]
        lines += ["    " + line for line in document["profile"]]
    return "\n".join(lines)


def replace_section(text: str, suite: str, body: str) -> str:
    """`text` with the suite's marked section replaced by `body`; ValueError without markers."""
    begin, end = markers(suite)
    pattern = re.compile(
        re.escape(f"<!-- {suite}-results:begin") + r"[^>]*-->\n.*?" + re.escape(end), re.S
    )
    if pattern.search(text) is None:
        raise ValueError(f"no {suite}-results markers in the document (add {begin} ... {end})")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)


def write(path: Path, suite: str, body: str) -> None:
    path.write_text(replace_section(path.read_text(), suite, body))
