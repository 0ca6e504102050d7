"""`--version` on forkd, forkctl and mktap: one line, `forkd X.Y.Z`, exit 0.

The version comes from the installed distribution's metadata (what pip reports), and from
`forkd.__version__` when the source tree runs uninstalled; pyproject.toml takes its version
from `forkd.__version__`, so the two agree wherever this checkout is installed."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable

import pytest

import forkd
from forkd import cli
from forkd.cli import forkctl, mktap
from forkd.cli import forkd as forkd_cli
from forkd.testing import forkctl as run_forkctl
from forkd.testing import mktap as run_mktap
from forkd.testing import run_forkd

MAINS: dict[str, Callable[[list[str]], int]] = {
    "forkd": forkd_cli.main,
    "forkctl": forkctl.main,
    "mktap": mktap.main,
}


@pytest.mark.parametrize("name", sorted(MAINS))
def test_version_prints_the_distribution_version_and_exits_0(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: {"forkd": "7.8.9"}[dist])
    with pytest.raises(SystemExit) as exited:
        MAINS[name](["--version"])
    assert exited.value.code == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("forkd 7.8.9\n", "")


def test_an_uninstalled_checkout_reports_its_own_version(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(dist: str) -> str:
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.version_line() == f"forkd {forkd.__version__}"


def test_the_version_is_a_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", forkd.__version__)


@pytest.mark.e2e
def test_each_command_answers_version_in_its_own_process() -> None:
    """The real commands, as a packager's smoke test or a bug report runs them: stdout is
    exactly one line, nothing on stderr, exit 0, and forkctl needs no control socket."""
    line = cli.version_line() + "\n"
    for done in (run_forkd("--version"), run_forkctl(None, "--version"), run_mktap("--version")):
        assert (done.returncode, done.stdout, done.stderr) == (0, line, ""), done.args
