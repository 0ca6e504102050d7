"""Add a tap module's ports to the running application: live, no worker restarts.

Usage: forkctl append [--no-save] NAME [tap options]

The live form of `mktap --append FILE NAME [options]`: the master imports tap module NAME,
parses the options, runs its getPorts on a scratch application, binds each new port, and
hands the listening socket (SCM_RIGHTS) and the pickled factory to every running worker.
The command answers once every worker serves the new ports. Then the ports are added to
the tap file on disk (atomically) so a reload or a restart keeps them; `--no-save` makes the
change last only until the next reload. `forkctl append NAME --help` shows the tap's help.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from typing import Any

from forkd import tapfile, taps
from forkd.app import Application
from forkd.control.api import MasterAPI
from forkd.control.commands import _args, _tapedit
from forkd.control.reply import CommandError, Reply
from forkd.ports import PortError, port_key
from forkd.tapfile import TapError
from forkd.usage import UsageError

name = "append"
timeout = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-save", action="store_true", help="do not write the new ports into the tap file"
    )
    parser.add_argument("name", help="the tap module (mktap --list)")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the tap module's options")


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    # `forkctl append echo --port 9212 --no-save`: the flag is forkctl's wherever it is
    options = [option for option in namespace.options if option != "--no-save"]
    return {
        "name": namespace.name,
        "options": options,
        "save": not (namespace.no_save or len(options) < len(namespace.options)),
    }


def build_ports(module_name: str, options: list[str]) -> tuple[list[Any], str | None]:
    """The ports tap module `module_name` makes with `options`, or its --help text."""
    printed = io.StringIO()
    try:
        module = taps.load(module_name)
        config = taps.make_options(module, module_name)
        with contextlib.redirect_stdout(printed):
            config.parseOptions(options)
    except (taps.TapNotFound, taps.BadTap) as error:
        raise CommandError(str(error)) from None
    except SystemExit:  # --help: the text goes back to forkctl, the master stays up
        return [], printed.getvalue()
    except UsageError as error:
        raise CommandError(f"{module_name}: Usage Error: {error}") from None
    except Exception as error:  # a tap module's bug must not reach the master's loop
        raise CommandError(f"{module_name}: {type(error).__name__}: {error}") from None
    scratch = Application(module_name)
    try:
        ports = taps.apply(module, scratch, config)
    except (UsageError, ValueError, taps.BadTap) as error:
        raise CommandError(f"{module_name}: {error}") from None
    except Exception as error:
        raise CommandError(f"{module_name}: {type(error).__name__}: {error}") from None
    # Checked before anything binds: a port that cannot be pickled can neither reach the
    # workers nor be saved in the tap, and the message must say which attribute it is.
    unpicklable = tapfile.unpicklable_path(ports, "ports")
    if unpicklable is not None:
        where, reason = unpicklable
        raise CommandError(f"{module_name}: cannot pickle {where}: {reason}")
    if not ports:
        raise CommandError(f"tap module {module_name!r} made no ports with these options")
    return ports, None


def execute(master: MasterAPI, args: dict[str, Any], reply: Reply) -> None:
    module_name = _args.required_text(args, "name")
    options = _args.text_list(args, "options")
    save = _args.flag(args, "save", True)
    ports, help_text = build_ports(module_name, options)
    if help_text is not None:
        reply(None, {"help": help_text})
        return
    application = master.application
    existing = {port_key(port) for port in application.ports}
    for port in ports:
        if port_key(port) in existing:
            raise CommandError(f"{port_key(port)} is already a port of {application.name!r}")
    started = time.monotonic()
    added: list[Any] = []

    def finish(errors: list[str]) -> None:
        if errors:
            reply("; ".join(errors), None)
            return
        saved = None
        if save:
            try:
                saved = _tapedit.add_ports(master.application, master.tapfile, added)
            except (TapError, OSError) as error:
                reply(f"the new ports serve, but saving them to the tap failed: {error}", None)
                return
        reply(
            None,
            {
                "ports": [
                    {"key": port_key(port), "repr": repr(port), "served_by": served_by(port)}
                    for port in added
                ],
                "saved": saved,
                "seconds": round(time.monotonic() - started, 6),
            },
        )

    gather = _args.Gather(finish)
    for port in ports:
        try:
            master.add_port(port, gather.part())
        except PortError as error:
            for done in added:  # all or nothing: unbind what this command already bound
                master.remove_port(done, lambda error, result: None)
                _forget(application, done)
            raise CommandError(str(error)) from None
        added.append(port)
        if not any(port is known for known in application.ports):
            application.ports.append(port)
    gather.close()


def _forget(application: Any, port: Any) -> None:
    application.ports = [known for known in application.ports if known is not port]


def served_by(port: Any) -> str:
    """Who serves a port: the master itself for a `servedByMaster` factory (telnet)."""
    return "master" if getattr(port.factory, "servedByMaster", False) else "workers"


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    if "help" in result:
        return str(result["help"]).rstrip("\n")
    ports = result.get("ports", [])
    lines = [f"serving {port['repr']}" for port in ports]
    by = {port.get("served_by", "workers") for port in ports}
    seconds = result.get("seconds")
    if isinstance(seconds, (int, float)):
        took = f"after {seconds * 1000:.1f} ms"
        if by == {"master"}:
            lines.append(f"the master serves it itself (servedByMaster), {took}")
        else:
            lines.append(f"every worker serves it {took}")
    lines.append(
        f"saved to {result['saved']}"
        if result.get("saved")
        else "not saved: the change lasts until the next reload"
    )
    return "\n".join(lines)
