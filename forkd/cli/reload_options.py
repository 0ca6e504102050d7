"""The `--reload` options of `forkd start` and `forkd serve`, uvicorn's names and meaning.

    --reload                 reload when the source changes (development; off by default)
    --reload-dir DIR         watch DIR instead of the default (repeatable)
    --reload-include GLOB    files that count besides *.py (repeatable)
    --reload-exclude GLOB    files or directories that do not (repeatable)
    --reload-delay S         quiet time after a burst of changes before the reload

What a change does is `forkctl reload` (forkd.supervisor.reloader): the development
reload is the production reload.
"""

from __future__ import annotations

import argparse
import os

from forkd.cli import positive_seconds
from forkd.supervisor.reloader import DEFAULT_DELAY, DEFAULT_INCLUDE, ReloadSettings

INSTALL_HINT = "pip install 'forkd[reload]'"


class ReloadOptionError(Exception):
    """The --reload options cannot be honoured; the message is one line for the user."""


def add_reload_options(parser: argparse.ArgumentParser, default_dirs: str) -> None:
    """Add the options to `forkd start` or `forkd serve`; `default_dirs` says what is
    watched without --reload-dir."""
    group = parser.add_argument_group(
        "development reload",
        "Each change (debounced) runs the zero-drop reload of `forkctl reload`: new workers "
        "import the new code, and a change that fails (a syntax error) rolls back, the old "
        f"code serving on until the next save. Needs watchfiles ({INSTALL_HINT}).",
    )
    group.add_argument(
        "--reload",
        action="store_true",
        help=f"reload when the source changes (for development; watches {default_dirs})",
    )
    group.add_argument(
        "--reload-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="watch DIR instead (repeatable)",
    )
    group.add_argument(
        "--reload-include",
        action="append",
        default=[],
        metavar="GLOB",
        help=f"files that count, besides {' '.join(DEFAULT_INCLUDE)} (repeatable)",
    )
    group.add_argument(
        "--reload-exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="files or directories that do not count (repeatable)",
    )
    group.add_argument(
        "--reload-delay",
        type=positive_seconds,
        default=None,
        metavar="S",
        help=f"seconds of quiet after a burst of changes (default {DEFAULT_DELAY:g})",
    )


def reload_settings(
    args: argparse.Namespace, default_dirs: list[str], files: tuple[str, ...] = ()
) -> ReloadSettings | None:
    """What the source watcher is to watch, or None without --reload. Relative
    directories are taken from the current directory (after `--chdir`)."""
    tuning = args.reload_dir or args.reload_include or args.reload_exclude
    if not args.reload:
        if tuning or args.reload_delay is not None:
            raise ReloadOptionError(
                "--reload-dir, --reload-include, --reload-exclude and --reload-delay need --reload"
            )
        return None
    try:
        import watchfiles  # noqa: F401  (the watcher process needs it; say so now)
    except ImportError:
        raise ReloadOptionError(f"--reload needs the watchfiles package: {INSTALL_HINT}") from None
    paths = [os.path.abspath(path) for path in args.reload_dir or default_dirs]
    for path in paths:
        if not os.path.isdir(path):
            given = "--reload-dir" if args.reload_dir else "--reload: cannot watch"
            raise ReloadOptionError(f"{given} {path}: not a directory")
    return ReloadSettings(
        paths=paths,
        files=[os.path.abspath(path) for path in files],
        include=[*DEFAULT_INCLUDE, *args.reload_include],
        exclude=list(args.reload_exclude),
        delay=args.reload_delay if args.reload_delay is not None else DEFAULT_DELAY,
    )
