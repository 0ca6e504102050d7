"""forkd and forkctl as the executables etc/ files name (/usr/local/bin/forkd), made here as
small scripts that run this checkout, so the files can be tested without installing it."""

from __future__ import annotations

import pathlib
import shlex
import sys

from forkd.testing import forkd_env


def install_commands(directory: pathlib.Path) -> dict[str, str]:
    """Write `forkd` and `forkctl` into `directory`; return their paths by name. Each runs
    this interpreter on this source tree (PYTHONPATH fixed inside, as an installed entry
    point would be), whatever environment the script that calls it passes on."""
    directory.mkdir(parents=True, exist_ok=True)
    pythonpath = forkd_env()["PYTHONPATH"]
    paths = {}
    for name, module in (("forkd", "forkd.cli.forkd"), ("forkctl", "forkd.cli.forkctl")):
        path = directory / name
        path.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH={shlex.quote(pythonpath)}; export PYTHONPATH\n"
            f'exec {shlex.quote(sys.executable)} -m {module} "$@"\n'
        )
        path.chmod(0o755)
        paths[name] = str(path)
    return paths


def script_env() -> dict[str, str]:
    """The environment for a script under test: none of the caller's NOTIFY_SOCKET or
    FORKD_CONTROL (forkd_env drops them), nothing pointing at /etc/default/forkd."""
    env = forkd_env()
    env.pop("FORKD_DEFAULTS", None)
    return env


def repo_file(relative: str) -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[2] / relative
