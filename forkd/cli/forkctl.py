"""forkctl: control a running forkd master over its control socket.

    forkctl [-c CTL] status [--json] | append NAME [opts] | remove ADDR | restart | reload
            | save [TAG] | scale N|+N|-N | reopen | stop [--now] | shell

The socket is `-c CTL`, else `$FORKD_CONTROL`, else the only `*.ctl` file in the current
directory. Exit status 0 on success; otherwise one line on stderr and 1 (2 for bad usage).
The commands themselves (arguments, help, rendering) live in forkd.control.commands.
"""

from __future__ import annotations

import argparse
import glob
import os
import stat
import sys

from forkd.cli import (
    add_command,
    add_version,
    parse_command,
    positive_seconds,
    quiet_on_closed_pipe,
    shell_client,
)
from forkd.control.client import ControlError, request
from forkd.control.commands import COMMANDS, shell, status, summary

EXIT_FAILURE = 1
EXIT_USAGE = 2


class NoSocket(Exception):
    """No control socket could be chosen; the message says what to do."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forkctl",
        description="Control a running forkd master over its control socket.",
        epilog="Without -c: $FORKD_CONTROL, else the only *.ctl file in this directory.",
    )
    add_version(p)
    p.add_argument("-c", "--control", metavar="CTL", help="the master's control socket")
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="give up waiting for the answer after SECONDS",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        command = add_command(
            sub,
            name,
            help=summary(module),
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
    return p


def find_socket(given: str | None, directory: str = ".") -> str:
    """-c, else $FORKD_CONTROL, else the one *.ctl in `directory`."""
    if given:
        return checked_socket(given)
    environment = os.environ.get("FORKD_CONTROL")
    if environment:
        return checked_socket(environment, "$FORKD_CONTROL: ")
    found = sorted(glob.glob(os.path.join(directory, "*.ctl")))
    sockets = [path for path in found if is_socket(path)]
    if len(sockets) == 1 and len(found) > 1:
        return sockets[0]  # the others are not sockets (a copy, a stray file): no choice
    if len(found) == 1:
        return found[0]
    if not found:
        raise NoSocket("no *.ctl control socket here; give one with -c or $FORKD_CONTROL")
    names = ", ".join(os.path.basename(path) for path in found)
    raise NoSocket(f"several control sockets here ({names}); choose one with -c")


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def checked_socket(path: str, origin: str = "") -> str:
    """`path` if it can be a control socket; a file or directory there is named as such,
    rather than reported as "nothing is listening"."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path  # missing: the client says "no control socket at ..."
    if stat.S_ISDIR(mode):
        raise NoSocket(f"{origin}{path} is a directory, not a control socket")
    if not stat.S_ISSOCK(mode):
        raise NoSocket(
            f"{origin}{path} is not a control socket (forkd's is FILE.ctl beside the tap)"
        )
    return path


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = parse_command(parser(), argv)
    module = COMMANDS[args.command]
    try:
        path = find_socket(args.control)
        timeout = args.timeout if args.timeout is not None else module.timeout
        if module is shell:
            return shell_client.interact(path, timeout=timeout)
        result = request(path, module.name, module.request_args(args), timeout=timeout)
    except (NoSocket, ControlError) as error:
        print(f"forkctl: {error}", file=sys.stderr)
        if module is status and args.check:
            return status.EXIT_NOT_RUNNING
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("forkctl: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    text = module.render(result, args)
    if text:
        print(text)
    return int(getattr(module, "exit_code", lambda result, args: 0)(result, args))


if __name__ == "__main__":
    sys.exit(main())
