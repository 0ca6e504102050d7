"""What a benchmark result must state to be read later: the machine, its load, the versions.

A ratio means little without the CPU it ran on, how busy that CPU was (other work on a
2-core machine moves req/s far more than CPU per request), and which release of each peer
was measured. Every reading here is best effort: a fact that cannot be had is reported as
unknown rather than failing the run it describes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def uptime() -> str:
    """`uptime`'s line (load averages over 1, 5 and 15 minutes), as the brief asks."""
    try:
        done = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    one, five, fifteen = os.getloadavg()
    return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "uptime": uptime(),
    }


def wrk_version() -> str:
    """`wrk 4.1.0 [epoll] ...`: wrk -v prints it (and exits 1, having no URL)."""
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else UNKNOWN


_VERSIONS = """
import importlib.metadata as m, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(found))
"""


def package_versions(python: str | Path, names: list[str]) -> dict[str, str]:
    """The installed version of each of `names` that `python`'s environment has."""
    if not names or not Path(python).exists():
        return {}
    try:
        done = subprocess.run(
            [str(python), "-c", _VERSIONS, *names],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return {name: str(found[name]) for name in names if name in found}


def forkd_commit(repo: Path) -> str:
    """The commit forkd ran from, `+dirty` when the tree had changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    if head.returncode != 0:
        return UNKNOWN
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def versions(
    venv: Path, repo: Path, venv_packages: list[str], forkd_packages: list[str]
) -> dict[str, Any]:
    """Both sides' versions: the peers' venv and forkd's own interpreter (which can differ,
    and a framework's version moves the Flask and FastAPI rows)."""
    return {
        "wrk": wrk_version(),
        "forkd": forkd_commit(repo),
        "forkd_python": package_versions(sys.executable, forkd_packages),
        "peers_venv": str(venv),
        "peers": package_versions(venv / "bin" / "python", venv_packages),
    }
