"""The master's status report: what `forkctl status` and `forkd status` show.

Kept out of the arbiter because it only reads: pid, uptime, generation, each worker's
counters (from its heartbeats) and RSS (psutil), the ports, the crash backoff.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from forkd.ports import port_key
from forkd.supervisor.supervision import clock


def rss_of(pid: int) -> int | None:
    with contextlib.suppress(Exception):
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    return None


def master_status(master: Any) -> dict[str, Any]:
    workers = [
        {
            "number": w.number,
            "pid": w.pid,
            "generation": w.generation,
            "state": w.state.value,
            "connections": w.connections,
            "accepted": w.accepted,
            "requests": w.requests,
            "rss": rss_of(w.pid),
            "started": w.started_wall,
        }
        for w in sorted(master.workers.values(), key=lambda w: w.number)
    ]
    return {
        "pid": os.getpid(),
        "state": master.state.value,
        "started": master.started,
        "uptime": round(time.time() - master.started, 3),
        "tapfile": master.tapfile,
        "generation": master.generation,
        "workers": workers,
        "target_workers": master.target,
        "ports": [
            {"key": port_key(p), "repr": repr(p), "factory": repr(p.factory)}
            for p in master.application.ports
        ],
        "backoff": master.backoff.status(clock()),
        "unsaved": master.unsaved,
    }
