"""Logging for the master and its workers: the stdlib `logging`, one line per event.

Every line names the process and its role, so the lines of N workers interleaved in one file
stay readable:

    2024-05-01 12:00:00,123 [4242] [worker 3] INFO forkd.supervisor.worker: ready

`--log-format json` writes one JSON object per line instead (time, level, logger, pid,
role, message, and the traceback as one string field): a line-oriented log shipper then
never splits a traceback into unrelated lines.

A log file is reopened on SIGUSR1 (logrotate's `postrotate kill -USR1`); when forkd runs as a
daemon, stdout and stderr point at the log file too, so a traceback or a faulthandler dump
(SIGABRT of a stuck worker) lands in the log.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime

FORMAT = "%(asctime)s [%(process)d] [%(role)s] %(levelname)s %(name)s: %(message)s"
LOGGER_NAME = "forkd"


class RoleFilter(logging.Filter):
    """Adds `role` ("master", "worker 3") to each record."""

    def __init__(self) -> None:
        super().__init__()
        self.role = "master"

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per record; json.dumps escapes, so no message can forge a field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "role": getattr(record, "role", ""),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        return json.dumps(entry, ensure_ascii=True)


FORMATS = ("text", "json")


class ReopenableFileHandler(logging.FileHandler):
    """A FileHandler that reopens its file on request (after logrotate moved it)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


class LogSetup:
    """The process's logging configuration: where it goes and how to reopen it."""

    def __init__(
        self,
        target: str | None,
        redirect_std: bool = False,
        follow_renames: bool = False,
        log_format: str = "text",
    ) -> None:
        """`target` is a file path, or None / "-" for stderr. `redirect_std` points fds 1
        and 2 at the file (daemon mode), so stray output and tracebacks are kept.
        `follow_renames` is for a process the master does not tell to reopen (the source
        watcher): its file is reopened when logrotate has moved it."""
        self.path = None if target in (None, "-") else os.path.abspath(str(target))
        self.redirect_std = redirect_std and self.path is not None
        self.role_filter = RoleFilter()
        handler: logging.Handler
        if self.path is None:
            handler = logging.StreamHandler(sys.stderr)
        elif follow_renames:
            handler = logging.handlers.WatchedFileHandler(self.path, encoding="utf-8")
        else:
            handler = ReopenableFileHandler(self.path, encoding="utf-8")
        self.log_format = log_format
        handler.setFormatter(JSONFormatter() if log_format == "json" else logging.Formatter(FORMAT))
        handler.addFilter(self.role_filter)
        self.handler = handler
        logger = logging.getLogger(LOGGER_NAME)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        self._redirect()

    def set_role(self, role: str) -> None:
        self.role_filter.role = role

    def fault_fd(self) -> int:
        """A descriptor faulthandler can write tracebacks to."""
        stream = getattr(self.handler, "stream", None)
        try:
            return stream.fileno() if stream is not None else 2
        except (AttributeError, OSError, ValueError):
            return 2

    def reopen(self) -> None:
        if isinstance(self.handler, ReopenableFileHandler):
            self.handler.reopen()
            self._redirect()

    def _redirect(self) -> None:
        if not self.redirect_std or not isinstance(self.handler, ReopenableFileHandler):
            return
        stream = self.handler.stream
        if stream is None:
            return
        for fd in (1, 2):
            os.dup2(stream.fileno(), fd)


def get(name: str) -> logging.Logger:
    """A logger below forkd's ("forkd.master", "forkd.worker")."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)
