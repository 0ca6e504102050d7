"""A Python prompt inside the running master, with `application` in its namespace.

Usage: forkctl shell

As the seed's telnet session: `import __main__; __main__.application.ports` lists the ports,
`application.listenTCP(8443, factory)` serves a new port at once, any other change to the
application reaches the workers by a graceful rolling restart (the shell says so), and
`application.save("known-good")` writes `<base>-known-good.tap`. Line editing and history
(~/.forkd_history) are on this side; Ctrl-D leaves, Ctrl-C drops the statement being typed.

Protocol: one request per statement, on one connection (the namespace lives as long as it):
`{"command": "shell", "args": {"source": "<every line of the pending statement>"}}` ->
`{"output": "what it printed", "more": bool}`; `more` means the statement is not complete yet:
send it again with the next line appended.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from forkd.commands import _args
from forkd.control import Reply
from forkd.control_client import Connection, ConnectionClosed

name = "shell"
timeout = 3600.0
PROMPT, MORE_PROMPT = ">>> ", "... "
HISTORY = "~/.forkd_history"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def request_args(namespace: argparse.Namespace) -> dict[str, Any]:
    return {}


def execute(master: Any, args: dict[str, Any], reply: Reply) -> None:
    from forkd.shell import Shell

    source = _args.text(args, "source", "") or ""
    session = reply.session.get("shell")
    if session is None:
        session = reply.session["shell"] = Shell(master)
    output, more = session.push(source)
    reply(None, {"output": output, "more": more})


def render(result: dict[str, Any], namespace: argparse.Namespace) -> str:
    return str(result.get("output", ""))


def _enable_line_editing() -> Callable[[], None]:
    """readline with a history file, when stdin is a terminal; returns the saver."""
    if not sys.stdin.isatty():
        return lambda: None
    try:
        import readline
    except ImportError:
        return lambda: None
    path = os.path.expanduser(HISTORY)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    return save


def interact(
    path: str,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
    timeout: float = timeout,
) -> int:
    """The client loop: read lines, send the pending statement, print what it printed."""
    out = out or sys.stdout
    save_history = _enable_line_editing() if read is input else (lambda: None)
    connection = Connection(path, timeout=timeout)
    out.write(f"forkd shell on {path}; `application` is the running application\n")
    buffer: list[str] = []
    try:
        while True:
            try:
                line = read(MORE_PROMPT if buffer else PROMPT)
            except KeyboardInterrupt:
                out.write("\nKeyboardInterrupt\n")
                buffer = []
                continue
            except EOFError:
                out.write("\n")
                return 0
            buffer.append(line)
            try:
                result = connection.call("shell", {"source": "\n".join(buffer)})
            except ConnectionClosed:
                # A reload re-executed the master: its idle clients were dropped before
                # this statement was read. Start a new session rather than end the shell.
                connection.close()
                connection = Connection(path, timeout=timeout)
                buffer = []
                out.write(
                    "# forkd closed the connection (a reload re-executes the master)"
                    " before running that statement: new shell session, earlier "
                    "names are gone; enter it again\n"
                )
                continue
            if not result.get("more"):
                buffer = []
            out.write(str(result.get("output", "")))
            out.flush()
    finally:
        connection.close()
        save_history()
