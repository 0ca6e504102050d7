"""Public helpers for testing protocols, tap modules and forkd itself.

    from forkd.testing import StringTransport, connect
    proto = connect(MyFactory(), StringTransport())
    proto.dataReceived(b"hello\\r\\n")
    assert proto.transport.value() == b"hello\\r\\n"

- `StringTransport`, `connect`, `disconnect`, `Clock`: a protocol without sockets
  (forkd.testing.transport);
- `wait_for`, `wait_for_async`: wait for a condition with a deadline (forkd.testing.waiting);
- `free_port`, `refused`, `accept_queue`, `RunningForkd`, `run_forkd`, `forkctl`, `mktap`,
  `make_tap`: real processes on loopback (forkd.testing.processes);
- forkd.testing.gate: WSGI requests that block in a real worker until the test lets
  them on (imported by name, not here: it is a WSGI application too);
- `FakeMaster`: the master as the control plane sees it (forkd.testing.fakemaster).

The project's own tests use these; tap authors are welcome to.
"""

from forkd.testing.fakemaster import FakeMaster
from forkd.testing.processes import (
    REPO_ROOT,
    RunningForkd,
    accept_queue,
    forkctl,
    forkctl_command,
    forkd_command,
    forkd_env,
    free_port,
    make_tap,
    mktap,
    mktap_command,
    refused,
    run_forkd,
)
from forkd.testing.transport import Clock, DelayedCall, StringTransport, connect, disconnect
from forkd.testing.waiting import wait_for, wait_for_async

__all__ = [
    "REPO_ROOT",
    "Clock",
    "DelayedCall",
    "FakeMaster",
    "RunningForkd",
    "StringTransport",
    "accept_queue",
    "connect",
    "disconnect",
    "forkctl",
    "forkctl_command",
    "forkd_command",
    "forkd_env",
    "free_port",
    "make_tap",
    "mktap",
    "mktap_command",
    "refused",
    "run_forkd",
    "wait_for",
    "wait_for_async",
]
