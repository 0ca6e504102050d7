"""Save the running application: to its tap file, or to `<base>-TAG.tap` beside it.

Usage: forkctl save [TAG]

`forkctl save known-good` writes `app-known-good.tap` (the seed's
`__main__.application.save("known-good")`); `forkctl save` rewrites `app.tap` itself, which
keeps shell edits across a reload. Saving is atomic.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from forkd.control.api import MasterAPI
from forkd.control.commands import _args
from forkd.control.reply import CommandError, Reply
from forkd.tapfile import TapError

name = "save"
timeout = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", nargs="?", help="save to <base>-TAG.tap instead of the tap itself")


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {"tag": namespace.tag} if namespace.tag is not None else {}


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    tag = _args.text(args, "tag")
    try:
        path = master.save(tag)
    except TapError as error:  # a shell edit left something unpicklable: named in the message
        raise CommandError(str(error)) from None
    except ValueError as error:
        raise CommandError(str(error)) from None
    except OSError as error:  # name the tap, not mkstemp's temporary file
        where = os.path.dirname(master.application.tapPath(tag))
        raise CommandError(f"cannot save in {where}: {error.strerror or error}") from None
    reply(None, {"path": path})


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    return f"saved {result.get('path', '')}"
