"""The control socket's wire format, shared by the master's server and forkctl's client.

Each message is one `forkd.framing` frame (a 4-byte big-endian length, then a UTF-8 JSON
object), at most `MAX_MESSAGE` bytes (docs/INTERNALS.md, "Control socket protocol"):

    request:  {"version": 1, "id": N, "command": "status", "args": {...}}
    response: {"version": 1, "id": N, "ok": true, "result": {...}}
              {"version": 1, "id": N, "ok": false, "error": "one line"}

Kept apart from `forkd.control.server` so the client side (forkctl) imports the format without the
master's server.
"""

from __future__ import annotations

from typing import Any

from forkd.framing import HEADER, encode

__all__ = ["HEADER", "MAX_MESSAGE", "VERSION", "encode", "error_response", "result_response"]

VERSION = 1
MAX_MESSAGE = 1 << 20  # 1 MiB, for requests and responses alike


def one_line(text: str) -> str:
    """Errors travel as one line: forkctl prints them as its single stderr line."""
    return " ".join(str(text).split()) or "error"


def error_response(request_id: Any, error: str) -> dict[str, Any]:
    """The response that refuses a request (or a connection, with `request_id` None)."""
    return {"version": VERSION, "id": request_id, "ok": False, "error": one_line(error)}


def result_response(request_id: Any, result: dict[str, Any] | None) -> dict[str, Any]:
    """The response that answers a request."""
    return {"version": VERSION, "id": request_id, "ok": True, "result": result or {}}
