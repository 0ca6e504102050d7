"""Stop serving a port: workers stop accepting on it and finish its connections.

Usage: forkctl remove [--no-save] ADDR

ADDR is a port's key (`tcp:8080`, `unix:/run/app.sock`), its number or its path. Once every
worker has finished the port's connections the master closes it, and the port is removed
from the tap file on disk too (atomically) unless `--no-save`.
"""

from __future__ import annotations

import argparse
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.commands import _args, _tapedit
from forkd.control.reply import CommandError, Reply
from forkd.ports import PortError, port_key
from forkd.tapfile import TapError

name = "remove"
timeout = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-save", action="store_true", help="do not remove the port from the tap file"
    )
    parser.add_argument("address", metavar="ADDR", help="tcp:PORT, a port number, or a path")


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {"address": namespace.address, "save": not namespace.no_save}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    address = _args.required_text(args, "address")
    save = _args.flag(args, "save", True)
    application = master.application
    try:
        port = application.getPort(address)
    except KeyError as error:
        raise CommandError(str(error.args[0]) if error.args else f"no port {address}") from None
    key = port_key(port)

    def done(error: str | None, result: dict[str, Any] | None = None) -> None:
        if error:
            reply(error, None)
            return
        application.ports = [known for known in application.ports if known is not port]
        saved = None
        if save:
            try:
                saved = _tapedit.remove_port(application, master.tapfile, key)
            except (TapError, OSError) as failure:
                reply(f"{key} is closed, but saving the tap failed: {failure}", None)
                return
        reply(None, {"removed": key, "saved": saved})

    try:
        master.remove_port(port, done)
    except PortError as error:  # e.g. a restart or reload is in progress
        raise CommandError(str(error)) from None


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    saved = result.get("saved")
    return f"removed {result.get('removed')}" + (f"; saved to {saved}" if saved else "")
