"""The control socket's wire format, shared by the master's server and forkctl's client.

Each message is a 4-byte big-endian length followed by that many bytes of a UTF-8 JSON
object, at most `MAX_MESSAGE` bytes (docs/INTERNALS.md, "Control socket protocol"):

    request:  {"version": 1, "id": N, "command": "status", "args": {...}}
    response: {"version": 1, "id": N, "ok": true, "result": {...}}
              {"version": 1, "id": N, "ok": false, "error": "one line"}

Kept apart from `forkd.control` so the client side (forkctl) imports the format without the
master's server.
"""

from __future__ import annotations

import json
import struct
from typing import Any

VERSION = 1
HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 20  # 1 MiB, for requests and responses alike


def encode(message: dict[str, Any]) -> bytes:
    """Frame one message: 4-byte big-endian length, then compact UTF-8 JSON."""
    body = json.dumps(message, separators=(",", ":"), default=str).encode()
    return HEADER.pack(len(body)) + body


def one_line(text: str) -> str:
    """Errors travel as one line: forkctl prints them as its single stderr line."""
    return " ".join(str(text).split()) or "error"


def error_response(request_id: Any, error: str) -> dict[str, Any]:
    """The response that refuses a request (or a connection, with `request_id` None)."""
    return {"version": VERSION, "id": request_id, "ok": False, "error": one_line(error)}


def result_response(request_id: Any, result: dict[str, Any] | None) -> dict[str, Any]:
    """The response that answers a request."""
    return {"version": VERSION, "id": request_id, "ok": True, "result": result or {}}
