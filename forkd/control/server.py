"""The control socket: forkctl's way into the running master.

A UNIX stream socket (`<base>.ctl` beside the tap, or `--control PATH`), created mode 0600,
served inside the master's single-threaded selectors loop: no thread, no asyncio. The server
only ever registers file objects with `master.add_reader(fileobj, callback)` and
`master.add_writer`, and timers with `master.call_later` (`forkd.control.api.EventLoop`).

The wire format is in `forkd.control.wire` (frames: `forkd.framing`), one client's buffers
and deadlines in `forkd.control.connection`, the answer to one request in
`forkd.control.reply`; this module is the listening socket, admission, the sweep of stalled
clients and request dispatch.

Why it is built this way:

- The master must never block on a client, so every socket is non-blocking, reads and writes
  go through per-client buffers, a message over the size limit closes the client, a client
  that stalls mid-message (or never reads its replies) is closed after a timeout.
- A malformed message must never hurt the master: every frame that parses as a frame gets an
  error response; a frame that cannot be delimited (a length over the limit) gets one error
  and the connection is closed. No exception leaves a loop callback.
- The socket file is 0600 and every peer's uid is checked with SO_PEERCRED (root and the
  master's own effective uid only), so file permissions are not the only guard.
- Commands may finish later (append waits for every worker): a handler gets a `Reply` it may
  call at any time, exactly once. Replies can cross a re-exec (`Reply.detach`,
  `Reply.adopt`), which is how `forkctl reload` gets its answer from the new
  master image.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import time
from typing import Any

from forkd.control.accepting import AcceptPause
from forkd.control.api import MasterAPI
from forkd.control.commands import server_handlers
from forkd.control.connection import ClientConnection
from forkd.control.reply import CommandError, Handler, Reply
from forkd.control.wire import VERSION, encode, error_response
from forkd.ports import remove_stale_unix_socket

__all__ = ["MAX_CLIENTS", "ControlServer", "ControlSocketError", "check_path", "peer_uid"]

log = logging.getLogger("forkd.control")

MAX_CLIENTS = 128
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlSocketError(Exception):
    """The control socket cannot be created; the message is one line for the user."""


def check_path(path: str) -> None:
    """Refuse a path the kernel cannot bind, naming the option that chooses another."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ControlSocketError(
            f"control socket path is too long for a UNIX socket ({size} bytes, the limit is "
            f"{MAX_SOCKET_PATH}): {path}; choose a shorter path with --control PATH"
        )


def peer_uid(sock: socket.socket) -> int:
    """The effective uid of the process at the other end, from the kernel (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return int(_PEERCRED.unpack(raw)[1])


QUIET_COMMANDS = frozenset({"status"})  # read-only: not worth a log line each


SECRET_WORDS = ("password", "passwd", "secret", "token", "credential")
REDACTED = "<redacted>"


def redacted(args: Any) -> Any:
    """`args` with the value of every secret-looking option hidden, for the log: an
    `append telnet --password hunter2` must not write the password into a log file.
    Options given as a command-line list (`["--password", "x"]` or `["--password=x"]`)
    and as mapping keys are both covered."""
    if isinstance(args, dict):
        return {
            key: REDACTED if any(w in str(key).lower() for w in SECRET_WORDS) else redacted(v)
            for key, v in args.items()
        }
    if isinstance(args, list):
        out: list[Any] = []
        hide_next = False
        for item in args:
            text = str(item)
            secret = text.startswith("-") and any(w in text.lower() for w in SECRET_WORDS)
            if hide_next:
                out.append(REDACTED)
            elif secret and "=" in text:
                out.append(text.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(redacted(item))
            hide_next = secret and "=" not in text
        return out
    return args


def _summary(args: dict[str, Any]) -> str:
    text = json.dumps(redacted(args), separators=(",", ":"), default=str)
    return text if len(text) <= 200 else text[:197] + "..."


class ControlServer:
    """The control socket of one master: accepts forkctl clients and runs their commands.

    `ControlServer(master, path, fd=None)`: `fd` adopts an inherited listening socket (after a
    re-exec) instead of creating one. `listen()` creates or adopts it and registers it with
    the master's loop; `fileno()` is its fd (to pass across a re-exec); `close()` stops
    serving, closes every client and removes the socket file.
    """

    idle_timeout = 60.0  # a connected client that sends nothing at all
    session_idle_timeout = 3600.0  # an open `forkctl shell` between statements
    message_timeout = 10.0  # a message started but not finished
    write_timeout = 30.0  # replies not read by the client
    sweep_interval = 1.0

    def __init__(
        self,
        master: MasterAPI,
        path: str,
        fd: int | None = None,
        handlers: dict[str, Handler] | None = None,
        owner: int | None = None,
    ) -> None:
        self.master = master
        self.path = os.path.abspath(path)
        self.fd = fd
        self._handlers = handlers
        self.sock: socket.socket | None = None
        self.clients: set[ClientConnection] = set()
        self._sweeper: Any = None
        # `owner`: the uid the master will run as once it drops privileges (forkd start -u):
        # the socket file is made its own and its peers are let in, as the docs promise
        self.owner = owner
        self.allowed_uids = {0, os.geteuid()} | ({owner} if owner is not None else set())
        self.refused = 0
        self.pending_replies: set[Reply] = set()  # accepted requests not answered yet
        self._reload_replies: list[Reply] = []  # adopted across a re-exec
        self.accept_errors = AcceptPause(
            master, log, "control", self._stop_accepting, self._start_accepting
        )

    @property
    def handlers(self) -> dict[str, Handler]:
        if self._handlers is None:
            self._handlers = server_handlers()
        return self._handlers

    # -- the listening socket -------------------------------------------------------------
    def listen(self) -> None:
        """Create (0600, stale file replaced, live one refused) or adopt the socket; serve."""
        sock = socket.socket(fileno=self.fd) if self.fd is not None else self._create()
        sock.setblocking(False)
        sock.set_inheritable(False)
        self.sock = sock
        self._start_accepting()
        self._schedule_sweep()

    def _start_accepting(self) -> None:
        if self.sock is not None:
            self.master.add_reader(self.sock, self._on_accept)

    def _stop_accepting(self) -> None:
        if self.sock is not None:
            self.master.remove_reader(self.sock)

    def _create(self) -> socket.socket:
        check_path(self.path)
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
        try:
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            if self.owner is not None and self.owner != os.geteuid():
                os.chown(self.path, self.owner, -1)
            sock.listen(64)
        except OSError as error:
            sock.close()
            raise ControlSocketError(
                f"cannot create control socket {self.path}: {error.strerror or error}"
            ) from None
        finally:
            os.umask(old_umask)
        return sock

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(
                f"{self.path} exists and is not a socket; choose another path with --control"
            )
        try:
            served = remove_stale_unix_socket(self.path)  # a dead master's is removed
        except OSError as error:
            raise ControlSocketError(f"cannot use control socket {self.path}: {error}") from None
        if served:
            raise ControlSocketError(f"{self.path}: another forkd master is serving this socket")

    def fileno(self) -> int:
        if self.sock is None:
            raise ControlSocketError("the control socket is not listening")
        return self.sock.fileno()

    def close(self, unlink: bool = True) -> None:
        """Stop serving: close every client and the socket, and remove the socket file."""
        for client in list(self.clients):
            client.close()
        self.accept_errors.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.sock is not None:
            with contextlib.suppress(Exception):
                self.master.remove_reader(self.sock)
            self.sock.close()
            self.sock = None
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)

    # -- what the master asks of its control plane ----------------------------------------
    def reexec_state(self) -> dict[str, Any]:
        """Before a re-exec: detach every request still waiting for its answer (the reload
        itself among them). JSON-able; `fds` lists the descriptors to keep open."""
        replies = []
        for reply in list(self.pending_replies):
            if reply.done or not reply.attached:
                continue
            try:
                replies.append(reply.detach())
            except OSError as error:  # its client is gone: nothing waits for the answer
                log.warning(
                    "reload: cannot keep the %s request's connection: %s", reply.command, error
                )
        return {"fds": [entry["fd"] for entry in replies], "replies": replies}

    def resume(self, state: dict[str, Any]) -> None:
        """In the new image: take back the requests detached by `reexec_state`. The reload
        ones are answered by `reload_finished`; others cannot be, and are told so."""
        for entry in state.get("replies") or []:
            try:
                reply = Reply.adopt(entry)  # accepted by the previous image
            except (KeyError, TypeError, ValueError, OSError):
                continue
            if reply.command == "reload":
                self._reload_replies.append(reply)
            else:
                reply(
                    f"{reply.command}: interrupted by a reload of the master; "
                    "check with forkctl status",
                    None,
                )

    def reload_finished(self, error: str | None, result: dict[str, Any] | None = None) -> None:
        """The new image's reload outcome, for the forkctl that asked for it."""
        if error:
            log.error("reload failed: %s", error)
        else:
            log.info("reload done")
        replies, self._reload_replies = self._reload_replies, []
        for reply in replies:
            reply(error, result)

    # -- clients --------------------------------------------------------------------------
    def _on_accept(self) -> None:
        if self.sock is None:
            return
        for conn, _ in self.accept_errors.batch(self.sock, 32):
            try:
                self._admit(conn)
            except Exception:
                log.exception("control: could not admit a client")
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        uid = peer_uid(conn)
        if uid not in self.allowed_uids:
            self.refused += 1
            log.warning("control: refused a connection from uid %d", uid)
            with contextlib.suppress(OSError):
                conn.send(
                    encode(
                        error_response(
                            None, f"permission denied: uid {uid} may not control this forkd"
                        )
                    )
                )
            conn.close()
            return
        if len(self.clients) >= MAX_CLIENTS and not self._evict_idle():
            with contextlib.suppress(OSError):
                conn.send(encode(error_response(None, "too many control clients; try again")))
            conn.close()
            return
        client = ClientConnection(self, conn, uid)
        self.clients.add(client)
        self.master.add_reader(conn, client.on_readable)

    def _evict_idle(self) -> bool:
        """Make room for a new client by closing the one idle longest (no request running,
        nothing left to send; an open shell session only if no other is idle). Why: a
        script that leaks connections must not lock the administrator out of forkctl."""
        idle = [c for c in self.clients if not c.pending and not c.output.pending]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: (bool(c.session), c.last_activity))
        log.warning(
            "control: %d clients connected; closing the one idle longest (uid %s)",
            len(self.clients),
            oldest.uid,
        )
        oldest.close()
        return True

    def forget(self, client: ClientConnection) -> None:
        self.clients.discard(client)

    def _schedule_sweep(self) -> None:
        self._sweeper = self.master.call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        try:
            now = time.monotonic()
            for client in list(self.clients):
                why = client.expired(now)
                if why is not None:
                    log.info("control: closing client uid %s: %s", client.uid, why)
                    client.close()
            self._recreate_if_deleted()
        except Exception:
            log.exception("control: sweep failed")
        finally:
            if self.sock is not None:
                self._schedule_sweep()

    def _recreate_if_deleted(self) -> None:
        """A control socket file deleted under the master (a tmp cleaner, a careless `rm`)
        leaves it serving a socket nobody can reach, and forkctl saying forkd is not
        running: bind a new one at the same path. Only when nothing is there now, so a file
        someone else put at the path is never replaced. Connected clients keep theirs."""
        if self.sock is None or os.path.lexists(self.path):
            return
        try:
            sock = self._create()
        except ControlSocketError as error:
            log.warning("control: socket file %s was deleted; %s", self.path, error)
            return
        sock.setblocking(False)
        sock.set_inheritable(False)
        with contextlib.suppress(Exception):
            self.master.remove_reader(self.sock)
        self.sock.close()
        self.sock = sock
        if not self.accept_errors.paused:
            self._start_accepting()
        log.warning("control: socket file %s was deleted; created it again", self.path)

    # -- requests -------------------------------------------------------------------------
    def dispatch(self, client: ClientConnection, body: bytes) -> None:
        """Run one framed request; every outcome sends exactly one response."""
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            client.send_error(None, "malformed message: not UTF-8 JSON")
            return
        if not isinstance(request, dict):
            client.send_error(None, "malformed message: a request is a JSON object")
            return
        request_id = request.get("id")
        if not (request_id is None or isinstance(request_id, (int, str))) or isinstance(
            request_id, bool
        ):
            request_id = None
        if request.get("version") != VERSION:
            client.send_error(
                request_id,
                f"unsupported protocol version {request.get('version')!r} "
                f"(this forkd speaks {VERSION})",
            )
            return
        command = request.get("command")
        args = request.get("args", {})
        if not isinstance(command, str):
            client.send_error(request_id, "malformed message: 'command' must be a string")
            return
        if not isinstance(args, dict):
            client.send_error(request_id, "malformed message: 'args' must be an object")
            return
        handler = self.handlers.get(command)
        if handler is None:
            client.send_error(request_id, f"unknown command {command[:64]!r}")
            return
        if command not in QUIET_COMMANDS:  # one line per state change: who and what
            log.info("control: uid %s: %s %s", client.uid, command, _summary(args))
        client.pending += 1
        reply = Reply(client, request_id, command)
        self.pending_replies.add(reply)
        try:
            handler(self.master, args, reply)
        except CommandError as error:
            if not reply.done:
                reply(str(error), None)
        except Exception as error:
            log.exception("control: command %s failed", command)
            if not reply.done:
                reply(f"{command}: {type(error).__name__}: {error}", None)
