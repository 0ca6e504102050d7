"""The control commands: one module per command, circus style.

Each module holds everything about its command:

- `name`: what forkctl and the wire protocol call it;
- its docstring: `forkctl NAME --help` (the requests and results it exchanges are in
  docs/INTERNALS.md, "The commands");
- the client half: `add_arguments(parser)` (argparse), `request_args(namespace) -> dict`
  (the JSON `args`), `render(result, namespace) -> str` (what forkctl prints), `timeout`;
- the server half: `execute(master, args, reply)`, run in the master's loop; it calls
  `reply(error, result)` exactly once, now or later, or raises `CommandError`.

`COMMANDS` is the registry built from the modules, in the order forkctl lists them.
"""

from __future__ import annotations

from types import ModuleType

from forkd.control.reply import CommandError, Handler

from . import append, reload, remove, reopen, restart, save, scale, shell, status, stop

MODULES: tuple[ModuleType, ...] = (
    status,
    append,
    remove,
    restart,
    reload,
    save,
    scale,
    reopen,
    stop,
    shell,
)
COMMANDS: dict[str, ModuleType] = {module.name: module for module in MODULES}


__all__ = ["COMMANDS", "CommandError", "server_handlers", "summary"]


def server_handlers() -> dict[str, Handler]:
    """The server halves by name: what the ControlServer dispatches to."""
    return {name: module.execute for name, module in COMMANDS.items()}


def summary(module: ModuleType) -> str:
    """The first line of a command's docstring: its one-line help."""
    return (module.__doc__ or "").strip().splitlines()[0]
