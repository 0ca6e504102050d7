"""Listening ports: TCPPort, UNIXPort, and the interface for new transport types.

A port is created in the master (or by mktap), pickled in the .tap file, bound by the master
with `startListening()`, and served in every worker, which inherits the listening socket.

The port interface (the seed's "Writing New Transport Types"):

- `factory`: the Factory that builds a protocol for each connection;
- `startListening()`: open the OS resource (in the master, before privileges are dropped);
- `fileno()`: the listening file descriptor, inherited by the workers;
- `stopListening()`: close it;
- `key`: a string naming the address ("tcp:8080", "unix:/run/app.sock"), used by
  `forkctl remove` and by reload to tell which ports are new or gone;
- `contextFactory`: None, or (TLS) an object whose `getContext()` gives the worker its
  `ssl.SSLContext` (`forkd.tls.ServerContextFactory`). TLS is how a port serves, not where
  it listens: the key stays the address, so a reload that turns TLS on or changes the
  certificate keeps the listening socket;
- pickle-safe: `__getstate__` drops sockets and file descriptors.

A worker serves a port with `await port.serve(loop)` when the port has it (TCPPort and
UNIXPort do, on the event loop's fast native transports, through a forkd.listening.Listener
that the worker's load can hold back: `port.listener`). A seed-style port without `serve`
is driven with the loop's reader/writer callbacks: `doRead()` when `fileno()` is readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from forkd import tls
from forkd.listening import Listener
from forkd.protocol import address_tuple, protocol_factory

Socket = socket.socket  # the class attribute `socket` below shadows the module there

DEFAULT_BACKLOG = 511  # nginx's default; the kernel caps it at net.core.somaxconn


class PortError(Exception):
    """A port could not be opened: the message names the address and the reason."""


def remove_stale_unix_socket(path: str) -> bool:
    """Remove a UNIX socket file nothing serves (left by a crash); True if one is served.

    A path that is not a socket is left alone (binding it then fails with a clear error);
    other connect errors (permission denied) are raised."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False
    finally:
        probe.close()
    return True


def factory_name(factory: Any) -> str:
    cls = type(factory)
    return f"{cls.__module__}.{cls.__qualname__}"


def port_key(port: Any) -> str:
    """The address key of any port object (ports without `key` are named by repr)."""
    key = getattr(port, "key", None)
    return key if isinstance(key, str) else repr(port)


class _SocketPort:
    """What TCP and UNIX ports share: the socket's life and pickling."""

    socket: Socket | None = None
    backlog = DEFAULT_BACKLOG
    factory: Any
    contextFactory: Any = None  # TLS when set; taps made before TLS have none
    listener: Listener | None = None  # while a worker serves it

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("socket", None)
        state.pop("listener", None)
        return state

    async def _serveWith(
        self,
        loop: asyncio.AbstractEventLoop,
        create: Callable[..., Any],
    ) -> Listener:
        """Serve the socket with the loop's `create` (create_server or create_unix_server)
        through a Listener, which the worker's load may hold back (forkd.listening)."""
        assert self.socket is not None, "startListening() first"
        factory = protocol_factory(self.factory, self)
        secure = tls.serving(self.contextFactory)  # the context is built once

        async def start(sock: Socket) -> asyncio.AbstractServer:
            server: asyncio.AbstractServer = await create(
                factory, sock=sock, backlog=self.backlog, **secure
            )
            return server

        listener = Listener(loop, self.socket, factory, start, secure)
        await listener.start()
        self.listener = listener
        return listener

    def fileno(self) -> int:
        if self.socket is None:
            raise PortError(f"{self.key} is not listening")
        return self.socket.fileno()

    @property
    def key(self) -> str:
        raise NotImplementedError

    def adopt(self, fd: int) -> None:
        """Take over an already listening socket (inherited across re-exec, or from systemd)."""
        self.socket = socket.socket(fileno=fd)
        self.socket.setblocking(False)

    def stopListening(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def _over(self) -> str:
        """What the repr says after the address: how the port serves when not in plain."""
        return " over TLS" if self.contextFactory is not None else ""

    def _listen(self, sock: Socket, address: Any, shown: str) -> None:
        try:
            sock.bind(address)
            sock.listen(self.backlog)
        except OSError as error:
            sock.close()
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise PortError(f"cannot listen on {shown}: {reason}") from error
        sock.setblocking(False)
        self.socket = sock


class TCPPort(_SocketPort):
    """A TCP port on `interface` ('' = every IPv4 address; an IPv6 literal such as '::1' or
    '::' listens on IPv6). Port 0 asks the kernel for a free port; `port` then holds it."""

    def __init__(
        self,
        port: int,
        factory: Any,
        backlog: int = DEFAULT_BACKLOG,
        interface: str = "",
        contextFactory: Any = None,
    ) -> None:
        self.port = int(port)
        self.factory = factory
        self.backlog = backlog
        self.interface = interface
        self.contextFactory = contextFactory

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.interface else socket.AF_INET

    @property
    def key(self) -> str:
        if self.interface:
            host = f"[{self.interface}]" if ":" in self.interface else self.interface
            return f"tcp:{host}:{self.port}"
        return f"tcp:{self.port}"

    def startListening(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.family == socket.AF_INET6 and self.interface == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self._listen(sock, (self.interface, self.port), self.key)
        self.port = sock.getsockname()[1]

    def getHost(self) -> tuple[Any, ...]:
        kind = "INET6" if self.family == socket.AF_INET6 else "INET"
        return (kind, self.interface or "0.0.0.0", self.port)

    async def serve(self, loop: asyncio.AbstractEventLoop) -> Listener:
        return await self._serveWith(loop, loop.create_server)

    def __repr__(self) -> str:
        where = self.key[len("tcp:") :]
        return f"<{factory_name(self.factory)} on {where}{self._over()}>"


class UNIXPort(_SocketPort):
    """A UNIX-domain stream socket at `path`, created with file mode `mode`.

    A stale socket file (left by a crash: nothing accepts on it) is replaced; one that a live
    process serves is refused, as binding a TCP port in use would be."""

    def __init__(
        self,
        path: str,
        factory: Any,
        backlog: int = DEFAULT_BACKLOG,
        mode: int = 0o666,
        contextFactory: Any = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.factory = factory
        self.backlog = backlog
        self.mode = mode
        self.contextFactory = contextFactory

    @property
    def key(self) -> str:
        return f"unix:{self.path}"

    def startListening(self) -> None:
        self._remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listen(sock, self.path, self.path)
        os.chmod(self.path, self.mode)

    def _remove_stale_socket(self) -> None:
        if remove_stale_unix_socket(self.path):
            raise PortError(f"cannot listen on {self.path}: another process serves it")

    def stopListening(self) -> None:
        if self.socket is not None:
            super().stopListening()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def getHost(self) -> tuple[Any, ...]:
        return ("UNIX", self.path)

    async def serve(self, loop: asyncio.AbstractEventLoop) -> Listener:
        return await self._serveWith(loop, loop.create_unix_server)

    def __repr__(self) -> str:
        return f"<{factory_name(self.factory)} on {self.path}{self._over()}>"


class InheritedPort(_SocketPort):
    """A listening socket this process was started with, by descriptor number (gunicorn's
    `--bind fd://N`: a supervisor or a parent bound it). TCP or UNIX, whatever it is; what
    is not a listening stream socket is refused when the port starts."""

    def __init__(self, fd: int, factory: Any) -> None:
        self.fd = int(fd)
        self.factory = factory

    @property
    def key(self) -> str:
        return f"fd:{self.fd}"

    def startListening(self) -> None:
        try:
            sock = socket.socket(fileno=self.fd)
        except OSError as error:
            raise PortError(f"fd://{self.fd}: {os.strerror(error.errno or 0)}") from None
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or not listening:
            sock.detach()  # not ours to close
            raise PortError(f"fd://{self.fd} is not a listening stream socket")
        os.set_inheritable(self.fd, False)
        sock.setblocking(False)
        self.socket = sock

    def getHost(self) -> tuple[Any, ...]:
        if self.socket is None:
            return ("FD", self.fd)
        return address_tuple(self.socket.getsockname(), self.socket.family)

    async def serve(self, loop: asyncio.AbstractEventLoop) -> Listener:
        assert self.socket is not None, "startListening() first"
        if self.socket.family == socket.AF_UNIX:
            return await self._serveWith(loop, loop.create_unix_server)
        return await self._serveWith(loop, loop.create_server)

    def __repr__(self) -> str:
        return f"<{factory_name(self.factory)} on fd {self.fd}>"
