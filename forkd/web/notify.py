"""Notifier: the one-shot, Deferred-like result of `Request.notifyFinish()`.

Twisted resources write `request.notifyFinish().addErrback(cancel)`; this is the smallest
object that keeps that working (addCallback, addErrback, addBoth) without a Deferred
library, and it can be awaited in asyncio code too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

_PENDING = object()


class Notifier:
    """Fires once, with a result (callback) or an exception (errback)."""

    __slots__ = ("_result", "_failed", "_callbacks")

    def __init__(self) -> None:
        self._result: Any = _PENDING
        self._failed = False
        self._callbacks: list[tuple[Callable[..., Any] | None, Callable[..., Any] | None]] = []

    @property
    def called(self) -> bool:
        return self._result is not _PENDING

    def addCallbacks(
        self, callback: Callable[..., Any] | None, errback: Callable[..., Any] | None
    ) -> Notifier:
        self._callbacks.append((callback, errback))
        if self.called:
            self._run()
        return self

    def addCallback(self, callback: Callable[..., Any]) -> Notifier:
        return self.addCallbacks(callback, None)

    def addErrback(self, errback: Callable[..., Any]) -> Notifier:
        return self.addCallbacks(None, errback)

    def addBoth(self, callback: Callable[..., Any]) -> Notifier:
        return self.addCallbacks(callback, callback)

    def callback(self, result: Any) -> None:
        self._fire(result, False)

    def errback(self, reason: BaseException) -> None:
        self._fire(reason, True)

    def _fire(self, result: Any, failed: bool) -> None:
        if self.called:
            raise RuntimeError("Notifier already fired")
        self._result, self._failed = result, failed
        self._run()

    def _run(self) -> None:
        """Run the chain: each callback's return value (or exception) feeds the next."""
        while self._callbacks:
            callback, errback = self._callbacks.pop(0)
            handler = errback if self._failed else callback
            if handler is None:
                continue
            try:
                self._result = handler(self._result)
                self._failed = False
            except Exception as e:
                self._result, self._failed = e, True

    def __await__(self) -> Generator[Any, None, Any]:
        future = asyncio.get_running_loop().create_future()

        def settle(result: Any) -> Any:
            if not future.done():
                if self._failed:
                    future.set_exception(result)
                else:
                    future.set_result(result)
            return result

        self.addBoth(settle)
        return future.__await__()
