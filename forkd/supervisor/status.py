"""The parts of the master's status report that describe workers and ports.

`Master.status()` assembles what `forkctl status` and `forkd status` show (fields in
docs/INTERNALS.md); the per-worker and per-port entries are built here because they only
read: each worker's counters (from its heartbeats) and RSS (psutil), each port's factory.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psutil

from forkd.ports import port_key
from forkd.supervisor.supervision import WorkerProcess


def rss_of(pid: int) -> int | None:
    """Resident memory of `pid` in bytes, or None when it cannot be read (gone, denied)."""
    with contextlib.suppress(psutil.Error, OSError):
        return int(psutil.Process(pid).memory_info().rss)
    return None


def workers(processes: list[WorkerProcess]) -> list[dict[str, Any]]:
    return [
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
            "retiring": w.retiring,
        }
        for w in sorted(processes, key=lambda w: w.number)
    ]


def ports(application_ports: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "key": port_key(p),
            "repr": repr(p),
            "factory": repr(p.factory),
            "tls": getattr(p, "contextFactory", None) is not None,
        }
        for p in application_ports
    ]
