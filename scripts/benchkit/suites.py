"""The benchmark suites bench_http.py runs: which peers, scenarios and targets go together.

`http` (the default) is forkd.web's own server against uvicorn, granian, gunicorn, nginx,
Twisted and raw uvloop (benchkit/peers.py); `hosting` is `forkd serve MODULE:APP` against
the servers that host WSGI and ASGI apps (benchkit/hosting.py). A suite also says which
scenarios `--profile` samples forkd in, and which scenarios it reports as pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchkit import hosting, peers, report
from benchkit.peers import Peer
from benchkit.report import Target


@dataclass(frozen=True)
class Suite:
    """One family of comparisons, run and reported together."""

    name: str
    peers: list[Peer]
    scenarios: list[str]
    targets: list[Target]
    profiled: list[str]  # the scenarios whose forkd workers --profile samples
    pending: dict[str, str] = field(default_factory=dict)  # scenario -> why not measured
    venv_packages: list[str] = field(default_factory=list)  # versions the report states
    forkd_packages: list[str] = field(default_factory=list)

    @property
    def servers(self) -> list[str]:
        return sorted({peer.server for peer in self.peers})

    def select(self, only: list[str] | None, scenarios: list[str]) -> list[Peer]:
        return peers.select(only, scenarios, self.peers)

    def forkd_peer(self, scenario: str) -> Peer | None:
        return next(
            (p for p in self.peers if p.server == report.FORKD and p.scenario == scenario), None
        )


HTTP = Suite("http", peers.PEERS, peers.SCENARIOS, report.TARGETS, [peers.HELLO])
HOSTING = Suite(
    "hosting",
    hosting.PEERS,
    hosting.SCENARIOS,
    hosting.TARGETS,
    [hosting.WSGI_HELLO, hosting.ASGI_HELLO],
    hosting.PENDING,
    hosting.PEER_PACKAGES,
    hosting.FORKD_PACKAGES,
)
SUITES = {suite.name: suite for suite in (HTTP, HOSTING)}
