"""The master's metrics: what its workers report, added up, plus its own events, exposed in
the Prometheus text format (prometheus_client does the exposition).

Workers send their counts with every heartbeat (`forkd.protocol.stats.metrics()`: a flat
mapping of `name` or `name|label` to a number). The master keeps each worker's latest, and
when a worker exits folds its counters into `retired`, so a total is `retired` plus the
live workers' and never goes down: not across worker restarts, not across a reload (the
totals ride along in the re-exec snapshot). Nothing grows with restarts: the series are
named by what was counted (a port, a status class), never by a worker's pid.

This avoids what prometheus_client's multiprocess mode costs gunicorn users: one file per
worker that ever lived, and scrapes that slow down as they pile up.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from forkd.protocol import LATENCY_BUCKETS
from forkd.supervisor.supervision import WorkerProcess, WorkerState

#: worker metrics that are present values, summed over live workers only (the rest count up)
GAUGES = ("connections", "in_flight", "port_connections", "wsgi_threads_busy", "wsgi_threads")

EXIT_REASONS = (
    "reload",
    "restart",
    "rollback",
    "scale",
    "shutdown",
    "recycle",
    "stopped",
    "crash",
    "timeout",
    "boot_failure",
)
ROLLOUT_OUTCOMES = ("done", "rolled_back", "refused", "abandoned")


def is_gauge(key: str) -> bool:
    return key.partition("|")[0] in GAUGES


class MasterMetrics:
    """Totals that outlive workers, and the master's own event counts."""

    def __init__(self) -> None:
        self.retired: dict[str, float] = {}  # counters of workers that have exited
        self.events: dict[str, float] = {}  # "worker_starts", "worker_exits|crash", ...
        self.loop_lag = 0.0  # seconds the last lag probe ran late

    def count(self, event: str, by: float = 1) -> None:
        self.events[event] = self.events.get(event, 0) + by

    def worker_exited(self, worker: WorkerProcess, reason: str) -> None:
        """Fold `worker`'s last counters into the retired totals."""
        for key, value in worker.metrics.items():
            if not is_gauge(key):
                self.retired[key] = self.retired.get(key, 0) + value
        worker.metrics = {}
        self.count(f"worker_exits|{reason}")

    def totals(self, workers: Iterable[WorkerProcess]) -> dict[str, float]:
        """Every worker metric across the live workers, counters with the retired ones."""
        totals = dict(self.retired)
        for worker in workers:
            for key, value in worker.metrics.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    # -- across a re-exec -----------------------------------------------------------------
    def snapshot(self, workers: Iterable[WorkerProcess]) -> dict[str, Any]:
        """JSON-able state; the live workers' counts stay theirs (they keep reporting)."""
        return {"retired": dict(self.retired), "events": dict(self.events)}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state:
            self.retired = {str(k): float(v) for k, v in state.get("retired", {}).items()}
            self.events = {str(k): float(v) for k, v in state.get("events", {}).items()}


def labelled(values: dict[str, float], name: str) -> Iterator[tuple[str, float]]:
    """The (label, value) pairs of `name|label` keys."""
    prefix = name + "|"
    for key, value in sorted(values.items()):
        if key.startswith(prefix):
            yield key[len(prefix) :], value


def listen_queues() -> dict[int, int]:
    """Listening TCP sockets' accept queues by inode, from /proc/net/tcp{,6} (for a LISTEN
    socket, rx_queue is the number of connections waiting to be accepted)."""
    queues: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A":  # TCP_LISTEN
                        queues[int(fields[9])] = int(fields[4].partition(":")[2], 16)
        except OSError:  # not Linux, or /proc not mounted: no such metric
            continue
    return queues


def somaxconn() -> int:
    """The kernel's cap on any listen backlog."""
    try:
        with open("/proc/sys/net/core/somaxconn", encoding="ascii") as value:
            return int(value.read())
    except (OSError, ValueError):
        return socket.SOMAXCONN


class MasterCollector:
    """prometheus_client's view of one master (a custom collector, read at each scrape)."""

    def __init__(self, master: Any) -> None:
        self.master = master

    def collect(self) -> Iterator[Metric]:
        master = self.master
        metrics: MasterMetrics = master.metrics
        workers = list(master.pool.all())
        totals = metrics.totals(workers)
        events = metrics.events

        states = GaugeMetricFamily("forkd_workers", "Worker processes by state.", labels=["state"])
        for state in WorkerState:
            states.add_metric([state.value], sum(w.state is state for w in workers))
        yield states
        yield GaugeMetricFamily(
            "forkd_workers_target", "The worker count the master keeps.", value=master.target
        )
        yield GaugeMetricFamily(
            "forkd_generation", "The worker generation serving now.", value=master.generation
        )
        yield GaugeMetricFamily(
            "forkd_ready", "1 while every port is served by a ready worker.", value=master.ready()
        )
        yield CounterMetricFamily(
            "forkd_worker_starts", "Workers forked.", value=events.get("worker_starts", 0)
        )
        exits = CounterMetricFamily("forkd_worker_exits", "Worker exits.", labels=["reason"])
        for reason in EXIT_REASONS:
            exits.add_metric([reason], events.get(f"worker_exits|{reason}", 0))
        yield exits
        rollouts = CounterMetricFamily(
            "forkd_rollouts", "Restarts and reloads.", labels=["kind", "outcome"]
        )
        for kind in ("restart", "reload"):
            for outcome in ROLLOUT_OUTCOMES:
                rollouts.add_metric([kind, outcome], events.get(f"rollouts|{kind}|{outcome}", 0))
        yield rollouts
        backoff = master.backoff.status(master.loop.clock())
        yield GaugeMetricFamily(
            "forkd_backoff_failures",
            "The longest run of early failures of any worker slot.",
            value=backoff["failures"],
        )
        yield GaugeMetricFamily(
            "forkd_backoff_next_spawn_seconds",
            "Seconds until a slot held back by its crashes may be respawned.",
            value=backoff["next_spawn_in"],
        )
        yield GaugeMetricFamily(
            "forkd_master_loop_lag_seconds",
            "How late the master's loop ran its last one-second probe.",
            value=metrics.loop_lag,
        )

        yield GaugeMetricFamily(
            "forkd_connections_open", "Open connections.", value=totals.get("connections", 0)
        )
        yield GaugeMetricFamily(
            "forkd_requests_in_flight",
            "HTTP requests being answered, at the workers' last heartbeats.",
            value=totals.get("in_flight", 0),
        )
        yield GaugeMetricFamily(
            "forkd_workers_busy",
            "Workers answering at least one request at their last heartbeat (saturation).",
            value=sum(1 for w in workers if w.metrics.get("in_flight", 0) > 0),
        )
        yield CounterMetricFamily(
            "forkd_connections", "Connections accepted.", value=totals.get("accepted", 0)
        )
        yield CounterMetricFamily(
            "forkd_requests",
            "HTTP requests and WebSocket messages received.",
            value=totals.get("requests", 0),
        )
        by_port = (
            (
                "forkd_port_connections_open",
                GaugeMetricFamily,
                "port_connections",
                "Open connections",
            ),
            ("forkd_port_connections", CounterMetricFamily, "port_accepted", "Accepted"),
            ("forkd_port_requests", CounterMetricFamily, "port_requests", "HTTP request"),
        )
        for name, family, key, what in by_port:
            series = family(name, f"{what} connections by port.", labels=["port"])
            for port, value in labelled(totals, key):
                series.add_metric([port], value)
            yield series
        responses = CounterMetricFamily(
            "forkd_http_responses", "HTTP responses by status class.", labels=["code"]
        )
        for code, value in labelled(totals, "responses"):
            responses.add_metric([code], value)
        yield responses
        yield self._latency(totals)
        threads = GaugeMetricFamily(
            "forkd_wsgi_threads", "WSGI threads by state.", labels=["state"]
        )
        busy = totals.get("wsgi_threads_busy", 0)
        threads.add_metric(["busy"], busy)
        threads.add_metric(["idle"], totals.get("wsgi_threads", 0) - busy)
        yield threads
        yield from self._backlogs()

    @staticmethod
    def _latency(totals: dict[str, float]) -> HistogramMetricFamily:
        cumulative, buckets = 0.0, []
        per_bucket = dict(labelled(totals, "latency"))
        for bound in (*LATENCY_BUCKETS, "+Inf"):
            cumulative += per_bucket.get(str(bound), 0)
            buckets.append((str(bound), cumulative))
        return HistogramMetricFamily(
            "forkd_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            buckets=buckets,
            sum_value=totals.get("latency_sum", 0),
        )

    def _backlogs(self) -> Iterator[Metric]:
        queues = listen_queues()
        waiting = GaugeMetricFamily(
            "forkd_listen_queue", "Connections waiting to be accepted.", labels=["port"]
        )
        limit = GaugeMetricFamily(
            "forkd_listen_queue_limit", "The listen backlog (capped by somaxconn).", labels=["port"]
        )
        cap = somaxconn()
        for port in self.master.application.ports:
            sock = getattr(port, "socket", None)
            if not isinstance(sock, socket.socket) or sock.fileno() < 0:
                continue
            try:
                queue = queues.get(os.fstat(sock.fileno()).st_ino)
            except OSError:
                continue
            if queue is not None:
                waiting.add_metric([port.key], queue)
                limit.add_metric([port.key], min(port.backlog, cap))
        yield waiting
        yield limit


def exposition(master: Any) -> bytes:
    """The Prometheus text exposition of `master` (and of the master process itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MasterCollector(master))
    ProcessCollector(registry=registry)
    return generate_latest(registry)
