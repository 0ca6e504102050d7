"""`Reply`: the answer to one control request, which a command may give at any time.

Commands may finish later (append waits for every worker), so a handler gets a `Reply` and
calls it exactly once. A reply can cross a re-exec of the master: `Reply.detach` hands the
client's socket to the next image, which answers it with `Reply.adopt` (that is how
`forkctl reload` gets its answer from the new master image).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

from forkd.control.api import MasterAPI
from forkd.control.wire import encode, error_response, result_response

log = logging.getLogger("forkd.control")


class CommandError(Exception):
    """A command refuses a request; its message is the one-line error the client sees."""


class ReplyClient(Protocol):
    """The connection a reply answers (`forkd.control.connection.ClientConnection`)."""

    session: dict[str, Any]
    uid: int

    def reply_sent(self, reply: Reply, message: dict[str, Any]) -> None: ...
    def detach(self) -> socket.socket: ...


class Reply:
    """The answer to one request. Call it once: `reply(None, result)` or `reply("why", None)`.

    Handlers that finish later keep it; `session` is a dict that lives as long as the client's
    connection (the shell keeps its namespace there) and `uid` is the peer's uid.
    """

    def __init__(self, client: ReplyClient | None, request_id: Any, command: str) -> None:
        self._client = client
        self.id = request_id
        self.command = command
        self.done = False
        self.session: dict[str, Any] = client.session if client is not None else {}
        self.uid: int | None = client.uid if client is not None else None
        self._detached_fd: int | None = None

    @classmethod
    def adopt(cls, state: dict[str, Any]) -> Reply:
        """A Reply for a request detached by the previous master image (see `detach`)."""
        reply = cls(None, state.get("id"), str(state.get("command", "")))
        reply._detached_fd = int(state["fd"])
        return reply

    @property
    def attached(self) -> bool:
        """Whether a client connection in this loop is still waiting for this reply."""
        return self._client is not None

    def __call__(self, error: str | None, result: dict[str, Any] | None = None) -> None:
        if self.done:
            log.warning("control: %s answered twice; second answer dropped", self.command)
            return
        self.done = True
        if error is not None:
            message = error_response(self.id, error)
        else:
            message = result_response(self.id, result)
        if self._detached_fd is not None:
            fd, self._detached_fd = self._detached_fd, None
            _send_blocking(socket.socket(fileno=fd), encode(message))
            return
        if self._client is not None:
            self._client.reply_sent(self, message)

    def detach(self) -> dict[str, Any]:
        """Take the client's socket out of this loop so a re-executed master can answer it.

        Returns a JSON-able dict `{"fd", "id", "command"}`; the fd is made inheritable and
        no Python object owns it any more, so nothing closes it before the exec. The new
        image calls `Reply.adopt(state)` to get a Reply for it; if the exec never happens
        (a failure before it), calling this Reply still answers the client."""
        if self._client is None:
            raise RuntimeError("this reply has no client to detach")
        sock = self._client.detach()
        self._client = None
        sock.setblocking(True)
        fd = sock.detach()
        os.set_inheritable(fd, True)
        self._detached_fd = fd
        return {"fd": fd, "id": self.id, "command": self.command}


def _send_blocking(sock: socket.socket, data: bytes, timeout: float = 5.0) -> None:
    """Last words to a client outside the loop (after a re-exec): bounded, never raises."""
    try:
        sock.settimeout(timeout)
        sock.sendall(data)
    except OSError:
        pass
    finally:
        sock.close()


Handler = Callable[[MasterAPI, dict[str, Any], Reply], None]
"""A command: `handler(master, args, reply)`; it answers through `reply`, now or later."""
