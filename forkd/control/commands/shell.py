"""A Python prompt inside the running master, with `application` in its namespace.

Usage: forkctl shell

As the seed's telnet session: `import __main__; __main__.application.ports` lists the ports,
`application.listenTCP(8443, factory)` serves a new port at once, any other change to the
application reaches the workers by a graceful rolling restart (the shell says so), and
`application.save("known-good")` writes `<base>-known-good.tap`. Line editing and history
(~/.forkd_history) are on this side; Ctrl-D leaves, Ctrl-C drops the statement being typed.
"""

from __future__ import annotations

import argparse
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.commands import _args
from forkd.control.reply import Reply
from forkd.control.shell import Shell

name = "shell"
timeout = 3600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    source = _args.text(args, "source", "") or ""
    session = reply.session.get("shell")
    if session is None:
        session = reply.session["shell"] = Shell(master)
    output, more = session.push(source)
    reply(None, {"output": output, "more": more})


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    return str(result.get("output", ""))
