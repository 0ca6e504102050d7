"""The blocking client side of the control socket, for forkctl and `forkd status/stop`.

    from forkd.control.client import request, ControlError
    result = request("app.ctl", "status")          # -> the master's result dict
    request("app.ctl", "scale", {"spec": "+1"})    # raises ControlError("one line") on error

Every failure (no socket, nobody listening, permission, timeout, the master's own error)
becomes a ControlError whose message is one line fit for stderr: the CLI prints it and exits
non-zero, never a traceback. `Connection` keeps one socket open for several requests (the
shell session lives as long as its connection).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import socket
import time
from typing import Any

from forkd.control.wire import MAX_MESSAGE, VERSION
from forkd.framing import FrameDecoder, FrameError, FrameTooLarge, decode, encode

DEFAULT_TIMEOUT = 30.0


class ControlError(Exception):
    """A control request failed; str() is one line saying why."""


class ConnectionClosed(ControlError):
    """forkd closed the connection before answering: the request was not run (a master
    re-executing for a reload drops idle clients; a running request would be answered)."""


class Connection:
    """One connection to a master's control socket; requests are answered in order."""

    def __init__(self, path: str, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._frames = FrameDecoder(MAX_MESSAGE)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self._connect(path, timeout)
        except FileNotFoundError:
            self.sock.close()
            raise ControlError(f"no control socket at {path} (is forkd running?)") from None
        except PermissionError:
            self.sock.close()
            raise ControlError(f"permission denied connecting to {path}") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise ControlError(f"nothing is listening on {path} (is forkd running?)") from None
        except TimeoutError:
            self.sock.close()
            raise ControlError(f"{path}: forkd is not accepting connections (busy?)") from None
        except OSError as error:
            self.sock.close()
            if error.errno == errno.ENAMETOOLONG or "too long" in str(error):
                raise ControlError(
                    f"control socket path too long: {path}; use a shorter --control path"
                ) from None
            raise ControlError(f"cannot connect to {path}: {error.strerror or error}") from None

    def _connect(self, path: str, timeout: float | None) -> None:
        """Connect, waiting while the master's listen backlog is full: a UNIX socket with a
        timeout says EAGAIN at once then, where a TCP one would wait for the handshake."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                self.sock.connect(path)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise TimeoutError("the control socket's backlog stayed full") from None
                time.sleep(delay)  # a retry back-off, not a synchronisation
                delay = min(delay * 2, 0.1)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def call(
        self, command: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its response; the result, or ControlError."""
        request_id = next(self._ids)
        if timeout is not None:
            self.sock.settimeout(timeout)
        message = {"version": VERSION, "id": request_id, "command": command, "args": args or {}}
        try:
            # forkd may hang up first (a refusal): its reason is then waiting to be read
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.sock.sendall(encode(message))
            response = self._receive()
        except TimeoutError:
            raise ControlError(f"{command}: no answer from forkd within the timeout") from None
        except OSError as error:
            raise ControlError(
                f"{command}: connection to forkd lost: {error.strerror or error}"
            ) from None
        if not response.get("ok"):
            raise ControlError(str(response.get("error") or "forkd refused the request"))
        result = response.get("result")
        return result if isinstance(result, dict) else {}

    def _receive(self) -> dict[str, Any]:
        while True:
            try:
                body = next(iter(self._frames), None)
                if body is not None:
                    return decode(body)
            except FrameTooLarge as error:
                raise ControlError(f"response: {error}") from None
            except FrameError:
                raise ControlError("malformed response from forkd (not a JSON object)") from None
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionClosed("forkd closed the control connection before answering")
            self._frames.feed(data)


def request(
    path: str,
    command: str,
    args: dict[str, Any] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Run one command on the master at `path`; its result dict, or ControlError."""
    with Connection(path, timeout) as connection:
        return connection.call(command, args)


__all__ = ["Connection", "ConnectionClosed", "ControlError", "request"]
