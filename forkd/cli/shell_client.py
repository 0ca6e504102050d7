"""forkctl's side of `forkctl shell`: read statements, send them, print what they printed.

The server side (the interpreter in the master) is `forkd.control.commands.shell`; this is
the terminal: line editing, history in ~/.forkd_history, Ctrl-C and Ctrl-D, and a new
session when a reload re-executes the master under an idle prompt.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import TextIO

from forkd.control.client import Connection, ConnectionClosed
from forkd.control.commands import shell

PROMPT, MORE_PROMPT = ">>> ", "... "
HISTORY = "~/.forkd_history"


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
    timeout: float = shell.timeout,
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
