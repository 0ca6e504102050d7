"""forkd's test suite, laid out as the packages it tests.

    framework/   forkd's root modules (protocol, basic, usage, ports, taps, tapfile) and mktap
    web/         forkd.web and the web and hello tap modules
    supervisor/  forkd.supervisor: the master, its workers, the daemon, the forkd command
    control/     forkd.control: the control server, its commands, forkctl, the shell, telnet
    e2e/         end-to-end tests of behaviour that spans several of those packages
    apps/        real applications (Django, Flask, FastAPI, the web tap) served by a real
                 forkd, their responses read by h11 (h11client), their logs read back
    cli/         what forkd, forkctl and mktap share (--version)
    etc/         the deployment files in etc/: init script, logrotate, Dockerfile, Kubernetes
    scripts/     the benchmark harness in scripts/

Each directory is a package, so two test modules may share a name (web/test_server.py,
control/test_server.py). The shared helpers sit here: loops, supervising (a real Master
with nothing forked), webserving, the test tap modules probetap, udptap and orphantap,
and fixtures/; the public ones (FakeMaster, RunningForkd, wait_for, free_port) are in
forkd.testing.

Tests that start real forkd, forkctl or mktap processes (or a server subprocess) carry the
`e2e` marker, module-wide where every test does (test_e2e_*, e2e/, framework/test_mktap.py)
and per test elsewhere: `pytest -m "not e2e"` runs the rest in seconds.
"""

import pathlib

TAP_MODULES_DIR = str(pathlib.Path(__file__).resolve().parent)
"""Where the test tap modules (probetap, udptap) live: a forkd subprocess needs this
directory on its PYTHONPATH (`extra_paths=[TAP_MODULES_DIR]`) to unpickle their classes."""
