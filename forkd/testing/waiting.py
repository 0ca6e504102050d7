"""Waiting for a condition with a deadline, never a bare sleep: what tests synchronise on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll `condition` until it returns something truthy, and return that; AssertionError
    after `timeout` seconds. `message` names what was awaited in the error; a callable is
    called only then, so it can show state at the deadline (a log's tail, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {_said(message)}")
        time.sleep(interval)


async def wait_for_async(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.005,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """wait_for for a coroutine on a running event loop: between polls it yields to the
    loop (asyncio.sleep), so the connections under test make progress meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {_said(message)}")
        await asyncio.sleep(interval)


def _said(message: str | Callable[[], str]) -> str:
    return message if isinstance(message, str) else message()
