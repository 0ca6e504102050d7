"""WSGI hello for gunicorn's sync worker: the same fixed body as the other peers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request with BODY."""
    start_response("200 OK", HEADERS)
    return [BODY]
