"""Checking the `args` object of a request: it comes from a client, so nothing is assumed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forkd.control.api import Done
from forkd.control.reply import CommandError


def text(args: dict[str, Any], key: str, default: str | None = None) -> str | None:
    """A string argument (or `default` when absent); anything else is refused."""
    value = args.get(key, default)
    if value is not None and not isinstance(value, str):
        raise CommandError(f"argument {key!r} must be a string")
    return value


def required_text(args: dict[str, Any], key: str) -> str:
    value = text(args, key)
    if not value:
        raise CommandError(f"argument {key!r} is required")
    return value


def flag(args: dict[str, Any], key: str, default: bool = False) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise CommandError(f"argument {key!r} must be true or false")
    return value


def text_list(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CommandError(f"argument {key!r} must be a list of strings")
    return value


class Gather:
    """Waits for several `done(error, result)` callbacks, then calls `finish(errors)` once.

    `part()` hands out one callback per operation started; `close()` says no more will be
    started. Callbacks may fire synchronously (a master with no workers) or much later."""

    def __init__(self, finish: Callable[[list[str]], None]) -> None:
        self._finish = finish
        self._outstanding = 0
        self._closed = False
        self._finished = False
        self.errors: list[str] = []

    def part(self) -> Done:
        self._outstanding += 1
        called = False

        def done(error: str | None, result: dict[str, Any] | None = None) -> None:
            nonlocal called
            if called:
                return
            called = True
            if error:
                self.errors.append(str(error))
            self._outstanding -= 1
            self._check()

        return done

    def close(self) -> None:
        self._closed = True
        self._check()

    def _check(self) -> None:
        if self._closed and not self._outstanding and not self._finished:
            self._finished = True
            self._finish(self.errors)
