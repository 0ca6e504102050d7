"""Replace the workers one generation at a time from the master's in-memory application.

Usage: forkctl restart

This is how shell edits reach the workers; nothing is dropped (the listening sockets stay
open in the master). Answers once every new worker serves and the old ones have drained.
"""

from __future__ import annotations

import argparse
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.reply import Reply

name = "restart"
timeout = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    master.restart(reply)


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    return "restarted: every worker replaced"
