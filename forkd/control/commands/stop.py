"""Stop forkd: gracefully (finish in-flight requests) or, with --now, at once.

Usage: forkctl stop [--now]

On the way out the application is saved to `<base>-shutdown.tap`, as the seed says.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.commands import _args
from forkd.control.reply import Reply

name = "stop"
timeout = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--now",
        action="store_true",
        help="fast stop: do not wait for in-flight requests (like SIGQUIT)",
    )


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {"now": bool(namespace.now)}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    now = _args.flag(args, "now")
    reply(None, {"pid": os.getpid(), "graceful": not now})
    master.stop(graceful=not now)


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    how = "gracefully" if result.get("graceful", True) else "now"
    return f"forkd (pid {result.get('pid')}) stopping {how}"
