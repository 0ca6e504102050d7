"""Apply the tap file on disk (and changed code, and a new forkd) without dropping anything.

Usage: forkctl reload [--discard]

The master validates the tap in a child process, re-executes itself in place (same PID),
forks a new generation and drains the old one once the new one is ready. On any failure the
old workers keep serving and this command exits non-zero with the reason. A reload refuses
while the in-memory application has unsaved shell edits (they would be lost) unless
`--discard` is given; `forkctl save` keeps them instead.
"""

from __future__ import annotations

import argparse
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.commands import _args
from forkd.control.reply import CommandError, Reply

name = "reload"
timeout = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--discard", action="store_true", help="reload even though unsaved shell edits will be lost"
    )


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {"discard": bool(namespace.discard)}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    discard = _args.flag(args, "discard")
    if master.unsaved and not discard:
        raise CommandError(
            "refusing to reload: the application has unsaved shell edits that the tap on disk "
            "lacks; run 'forkctl save' to keep them or 'forkctl reload --discard' to drop them"
        )
    master.reload(discard, reply)


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    generation = result.get("generation")
    return "reloaded" + (f": generation {generation} serving" if generation is not None else "")
