"""Set the number of workers: N, or +N / -N relative to the current target.

Usage: forkctl scale N|+N|-N
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.commands import _args
from forkd.control.reply import CommandError, Reply

name = "scale"
timeout = 10.0
SPEC = re.compile(r"[+-]?[0-9]{1,4}")


def parse(spec: str, current: int) -> int:
    """The target a spec asks for, at least 0: the one parser of N, +N and -N (the master's
    `scale`, its TTIN/TTOU signals and this command all use it)."""
    text = str(spec).strip()
    if not SPEC.fullmatch(text):
        raise ValueError(f"bad worker count {text[:32]!r}: give N, +N or -N")
    number = int(text)
    return max(0, current + number if text[:1] in "+-" else number)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="N|+N|-N", help="worker count, or a change to it")


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {"spec": namespace.spec}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    spec = _args.required_text(args, "spec")
    try:
        target = master.scale(spec)
    except ValueError as error:
        raise CommandError(str(error)) from None
    reply(None, {"target": target})


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    return f"target workers: {result.get('target')}"
