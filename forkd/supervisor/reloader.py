"""`--reload` for development: the master's handle on its source watcher process.

The development reload is the production reload. A watcher process
(`forkd.supervisor.watcher`) sees the application's source change and asks the master,
over the control socket, for exactly what `forkctl reload` asks: the new code is imported
by a new generation of workers, which replaces the old one without dropping a connection,
or rolls back when it fails (a syntax error saved), the old workers serving on.

The watcher is a process of its own, started with `posix_spawn` (a fresh interpreter, not
a fork of the master), because the master stays single-threaded: it forks workers, and a
file-watching thread in it would be copied into each of them half-way through whatever it
was doing. The master starts it once it serves, keeps it across the re-exec of a reload
(its pid is in the reload state; it is still this pid's child), stops it when it stops,
and the watcher also ends by itself when its parent is gone, so it is never orphaned.
Nothing of this runs unless `--reload` was given.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from forkd.supervisor import logs
from forkd.supervisor.supervision import describe_status

if TYPE_CHECKING:  # the watcher process imports this module too, and needs no pool
    from forkd.supervisor.workers import WorkerPool

log = logs.get("master")

DEFAULT_INCLUDE = ("*.py",)
DEFAULT_DELAY = 0.1  # seconds of quiet after the last change of a burst (an editor's saves)


@dataclass
class ReloadSettings:
    """What `--reload` watches, as `forkd start` and `forkd serve` were told.

    `paths` are directories, watched recursively; a file under one counts when its path
    matches an `include` glob and no `exclude` glob (uvicorn's --reload-include and
    --reload-exclude). `files` count whatever the globs say (the tap of `forkd start`).
    `delay` is how long a burst of changes must be quiet before the reload is asked for."""

    paths: list[str]
    files: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=list)
    delay: float = DEFAULT_DELAY

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReloadSettings:
        return cls(**json.loads(text))


class Reloader:
    """The watcher process of one master: start it, adopt it after a re-exec, stop it."""

    def __init__(
        self,
        settings: ReloadSettings,
        pool: WorkerPool,
        control_path: str,
        log_path: str | None,
        title: str,
    ) -> None:
        self.settings = settings
        self.pool = pool  # reaps it (a helper, not a worker) and signals it
        self.control_path = control_path
        self.log_path = log_path
        self.title = title
        self.pid: int | None = None
        self.stopping = False

    def command(self) -> list[str]:
        """The watcher's argv: it reloads through `control_path` and watches this pid."""
        command = [sys.executable, "-m", "forkd.supervisor.watcher"]
        command += ["--control", self.control_path, "--parent", str(os.getpid())]
        command += ["--title", self.title]
        if self.log_path is not None:
            command += ["--log", self.log_path]
        return [*command, self.settings.to_json()]

    def start(self) -> None:
        """Start the watcher unless it runs (or the master is stopping)."""
        if self.pid is not None or self.stopping:
            return
        command = self.command()
        try:
            pid = os.posix_spawn(command[0], command, dict(os.environ), setsigmask=())
        except OSError as error:
            log.error("cannot start the source watcher: %s; --reload is off", error)
            return
        self.adopt(pid)
        log.info("source watcher started (pid %d): changes reload the workers", pid)

    def adopt(self, pid: int | None) -> None:
        """Take `pid` as the watcher (the previous master image's, after a re-exec)."""
        if pid is None:
            return
        self.pid = pid
        self.pool.helpers[pid] = self.exited

    def exited(self, status: int) -> None:
        self.pid = None
        if not self.stopping:
            text = describe_status(status)[0]
            log.error("the source watcher %s: changes no longer reload the workers", text)

    def stop(self) -> None:
        """The master is stopping: ask the watcher to end (reaped as any child)."""
        self.stopping = True
        if self.pid is not None:
            self.pool.kill(self.pid, signal.SIGTERM)

    def close(self) -> None:
        """The master is about to exit: the watcher must not outlive it, even for the
        moment it would take to notice its parent is gone."""
        self.stopping = True
        pid, self.pid = self.pid, None
        if pid is None:
            return
        self.pool.helpers.pop(pid, None)
        self.pool.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
