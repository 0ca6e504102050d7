"""Command-line entry points: thin layers that parse, call, print and exit."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import sys
from collections.abc import Callable
from typing import Any

EXIT_CLOSED_PIPE = 141  # what a shell reports for a command killed by SIGPIPE


def quiet_on_closed_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """`forkctl status | head`: stop quietly when the reader goes away, as Unix tools do.

    Not by restoring SIGPIPE's default action: these mains also run inside other Python
    processes (the tests), which must keep getting EPIPE as an exception."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            # later flushes of stdout (at exit) must not raise again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_CLOSED_PIPE

    return run


def version_line() -> str:
    """`forkd X.Y.Z`, what `--version` prints for all three commands: the installed
    distribution's version (what pip and a bug report see), else the source tree's own
    `forkd.__version__` when run from a checkout that is not installed."""
    try:
        return f"forkd {importlib.metadata.version('forkd')}"
    except importlib.metadata.PackageNotFoundError:
        from forkd import __version__

        return f"forkd {__version__}"


class PrintVersion(argparse.Action):
    """`--version`: print `version_line()` and exit 0. Looked up only when asked, so the
    commands that probes run every few seconds (`forkctl status`) do not pay for it."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the version (forkd X.Y.Z) and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_line())
        parser.exit(0)


def add_version(parser: argparse.ArgumentParser) -> None:
    """Give `parser` the `--version` option."""
    parser.add_argument("--version", action=PrintVersion)


def positive_seconds(text: str) -> float:
    """A timeout option: a positive finite number of seconds (not 0, negative, inf or nan)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def parse_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `PROG COMMAND [options]`, answering an unknown option with COMMAND's usage:
    argparse would show the top-level one, which does not list the option that was meant.
    Each subparser records itself as `command_parser` (see `add_command`)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def add_command(commands: Any, name: str, **how: Any) -> argparse.ArgumentParser:
    """`commands.add_parser(name, **how)` that `parse_command` can find again."""
    command: argparse.ArgumentParser = commands.add_parser(name, **how)
    command.set_defaults(command_parser=command)
    return command
