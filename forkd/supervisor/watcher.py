"""The source watcher of `--reload`: a process that asks its master for a reload when the
application's source changes (`python -m forkd.supervisor.watcher`, started by
`forkd.supervisor.reloader`).

watchfiles (Rust `notify`: inotify, FSEvents, kqueue) reports the changes and debounces a
burst of them (an editor's save, a `git checkout`) into one batch; `SourceFilter` keeps the
files that count. Each batch is one `reload` request on the control socket, the very one
`forkctl reload` sends, answered when the new generation serves or has rolled back; changes
made meanwhile are kept by watchfiles and make the next batch, so a save that fixes a
failed reload always gets its own. A failure is one line in the log and nothing else: the
master rolled back, the old workers serve on, and the next save tries again.

The watcher ends when its master stops it (TERM) or is gone: `ParentGone` is the stop
event watchfiles polls between its waits. Ctrl-C in a terminal reaches the watcher too;
it ignores that and lets the master, which got it as well, stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import os
import signal
import sys
from pathlib import PurePath

import setproctitle
import watchfiles

from forkd.control.client import ControlError, request
from forkd.control.commands import reload as reload_command
from forkd.supervisor import logs
from forkd.supervisor.logs import LogSetup
from forkd.supervisor.reloader import ReloadSettings

log = logs.get("watcher")

DEBOUNCE = 1.6  # seconds: the longest a burst is gathered into one batch (watchfiles')
IDLE_WAKEUP = 500  # ms without a change after which watchfiles hands back an empty batch


class SourceFilter:
    """Which changed paths ask for a reload: a file of `settings.files`, or a file under
    one of `settings.paths` whose path matches an include glob and neither it nor a
    directory between it and that root matches an exclude glob. watchfiles' own default
    filter goes first (`__pycache__`, `.git`, editors' swap and backup files)."""

    def __init__(self, settings: ReloadSettings) -> None:
        self.roots = [PurePath(path) for path in settings.paths]
        self.files = {os.path.abspath(path) for path in settings.files}
        self.include = settings.include
        self.exclude = settings.exclude
        self.default = watchfiles.DefaultFilter()

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if path in self.files:
            return True
        if not self.default(change, path):
            return False
        pure = PurePath(path)
        root = next((root for root in self.roots if pure.is_relative_to(root)), None)
        if root is None:  # under the directory of a watched file only
            return False
        parts = pure.relative_to(root).parts
        for pattern in self.exclude:
            if pure.match(pattern) or any(fnmatch.fnmatch(part, pattern) for part in parts):
                return False
        return any(pure.match(pattern) for pattern in self.include)


class ParentGone:
    """watchfiles' stop event: set once the master that started us is no longer our
    parent (it died without stopping us; we were handed to init)."""

    def __init__(self, parent: int) -> None:
        self.parent = parent

    def is_set(self) -> bool:
        return os.getppid() != self.parent


def watched_roots(settings: ReloadSettings) -> list[str]:
    """What watchfiles is pointed at: each directory, and the directory of each single
    file, since a file replaced by a rename (an atomic save) would take the watch with it."""
    roots = list(settings.paths)
    for path in settings.files:
        directory = os.path.dirname(os.path.abspath(path))
        if not any(PurePath(directory).is_relative_to(root) for root in roots):
            roots.append(directory)
    return roots


def forget_bytecode(paths: list[str]) -> None:
    """Remove the cached bytecode of changed modules, so the new workers compile them.

    Python trusts a `__pycache__` file while the source keeps the mtime, in whole seconds,
    and the size it recorded: an edit saved within the second of the last import that keeps
    the file's length (a typo fixed, a digit changed) would otherwise be imported as the
    old code."""
    for path in paths:
        if path.endswith(".py"):
            with contextlib.suppress(OSError, ValueError, NotImplementedError):
                os.unlink(importlib.util.cache_from_source(path))


def describe(paths: list[str], settings: ReloadSettings) -> str:
    """ "app.py" or "app.py and 2 more", relative to the directory watched."""
    first = paths[0]
    for root in settings.paths:
        if PurePath(first).is_relative_to(root):
            first = os.path.relpath(first, root)
            break
    return first if len(paths) == 1 else f"{first} and {len(paths) - 1} more"


def ask_reload(control: str, changed: str) -> bool:
    """`forkctl reload`, on behalf of the edit; whether it served the new code."""
    log.info("%s changed: reloading", changed)
    try:
        result = request(control, reload_command.name, {"discard": False}, reload_command.timeout)
    except ControlError as error:
        log.error("reload failed, the running code serves on until the next save: %s", error)
        return False
    log.info("reloaded: generation %s serves the new code", result.get("generation"))
    return True


def watch(settings: ReloadSettings, control: str, parent: int) -> None:
    """Ask for a reload after each batch of changes, until the master is gone."""
    step = max(1, round(settings.delay * 1000))
    batches = watchfiles.watch(
        *watched_roots(settings),
        watch_filter=SourceFilter(settings),
        step=step,
        debounce=max(round(DEBOUNCE * 1000), 2 * step),
        stop_event=ParentGone(parent),
        # an empty batch every so often: the first says the watches are in place
        rust_timeout=IDLE_WAKEUP,
        yield_on_timeout=True,
        raise_interrupt=False,
        ignore_permission_denied=True,
    )
    watching = False
    for batch in batches:
        if not watching:
            watching = True
            roots = ", ".join(settings.paths + settings.files)
            log.info("watching %s for %s", roots, " ".join(settings.include))
        if not batch:
            continue
        changed = sorted({path for _change, path in batch})
        forget_bytecode(changed)
        ask_reload(control, describe(changed, settings))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m forkd.supervisor.watcher")
    p.add_argument("--control", required=True, help="the master's control socket")
    p.add_argument("--parent", type=int, required=True, help="the master's pid")
    p.add_argument("--title", default="", help="the tap's name, for the process title")
    p.add_argument("--log", help="the master's log file (default: stderr)")
    p.add_argument("settings", help="forkd.supervisor.reloader.ReloadSettings as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master stops us; see the docstring
    setproctitle.setproctitle(f"forkd: watcher [{args.title}]")
    # the master's log, followed across logrotate's renames (the master reopens its own
    # on USR1; this process is not told, so it notices the rename itself)
    LogSetup(args.log, follow_renames=True).set_role("watcher")
    try:
        watch(ReloadSettings.from_json(args.settings), args.control, args.parent)
    except Exception:
        log.exception("the source watcher failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
