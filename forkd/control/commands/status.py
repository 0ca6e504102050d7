"""Show the master, its workers, its ports and its restart backoff.

Usage: forkctl status [--json] [--check]

`--check` is for scripts and probes: one line, and the exit status says it all: 0 ready
(every port served by a ready worker, no stop pending), 1 running but not ready, 3 not
running (no control socket answers), as an LSB init script's status does.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.reply import Reply

name = "status"
timeout = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw JSON status")
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if ready, 1 if not, 3 if not running"
    )


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    reply(None, master.status())


EXIT_NOT_READY, EXIT_NOT_RUNNING = 1, 3


def exit_code(result: dict[str, Any], namespace: argparse.Namespace) -> int:
    if getattr(namespace, "check", False) and not result.get("ready"):
        return EXIT_NOT_READY
    return 0


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    if getattr(namespace, "check", False):
        workers = result.get("workers", [])
        serving = sum(w.get("state") == "ready" for w in workers)
        verdict = "ready" if result.get("ready") else "not ready"
        return f"{verdict}: {serving}/{result.get('target_workers')} workers ready"
    if getattr(namespace, "json", False):
        return json.dumps(result, indent=2, sort_keys=True)
    return table(result)


def duration(seconds: Any) -> str:
    """12s, 5m03s, 2h04m, 3d02h: short and sortable by eye."""
    try:
        total = int(float(seconds))
    except (TypeError, ValueError):
        return "-"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def size(value: Any) -> str:
    if not isinstance(value, (int, float)) or value < 0:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def rss_of(worker: dict[str, Any]) -> Any:
    """The master's figure, else psutil's when the worker runs on this host."""
    rss = worker.get("rss")
    if rss is None and isinstance(worker.get("pid"), int):
        try:
            import psutil

            rss = psutil.Process(worker["pid"]).memory_info().rss
        except Exception:
            rss = None
    return rss


def columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def table(status: dict[str, Any]) -> str:
    workers = status.get("workers") or []
    lines = [
        f"master pid {status.get('pid', '-')}  up {duration(status.get('uptime'))}  "
        f"generation {status.get('generation', '-')}  "
        f"workers {len(workers)}/{status.get('target_workers', len(workers))}",
        f"tap {status.get('tapfile', '-')}"
        + ("  (unsaved shell edits)" if status.get("unsaved") else ""),
    ]
    backoff = status.get("backoff") or {}
    if backoff.get("failures"):
        wait = backoff.get("next_spawn_in")
        lines.append(
            f"backoff: {backoff['failures']} failed start(s)"
            + (f", next spawn in {float(wait):.1f}s" if isinstance(wait, (int, float)) else "")
        )
    lines.append("")
    rows = [["WORKER", "PID", "GEN", "STATE", "CONNS", "REQUESTS", "RSS", "UP"]]
    for worker in workers:
        rows.append(
            [
                str(worker.get(key, "-"))
                for key in ("number", "pid", "generation", "state", "connections", "requests")
            ]
            + [size(rss_of(worker)), duration(_age(worker, status))]
        )
    lines += columns(rows)
    lines.append("")
    port_rows = [["PORT", "FACTORY"]]
    for port in status.get("ports") or []:
        key = str(port.get("key", "-")) + (" (TLS)" if port.get("tls") else "")
        port_rows.append([key, str(port.get("factory", "-"))])
    lines += columns(port_rows)
    return "\n".join(lines)


def _age(worker: dict[str, Any], status: dict[str, Any]) -> Any:
    started, master_started = worker.get("started"), status.get("started")
    uptime = status.get("uptime")
    if not (
        isinstance(started, (int, float))
        and isinstance(master_started, (int, float))
        and isinstance(uptime, (int, float))
    ):
        return None
    return master_started + uptime - started
