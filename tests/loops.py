"""Running a scenario on each event loop forkd supports (stdlib asyncio and uvloop)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

LOOPS = ["asyncio", "uvloop"]


def run(kind: str, coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run `coro_fn()` on a fresh loop of the given kind, with a hard deadline."""
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), 15))
    finally:
        loop.close()
