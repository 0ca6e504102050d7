"""Reopen the log files (after logrotate moved them), in the master and every worker.

Usage: forkctl reopen
"""

from __future__ import annotations

import argparse
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.reply import Reply

name = "reopen"
timeout = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    master.reopen_logs()
    reply(None, {})


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    return "log files reopened"
