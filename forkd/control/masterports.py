"""Serving a port in the master's own selectors loop (ports whose factory says
`servedByMaster = True`, such as the telnet shell).

Why: the telnet shell must run code in the master, where the live application is; a worker
would only change its own copy. So such ports are never handed to workers: the master
accepts on them and drives each connection with non-blocking reads and writes through
the master's loop (`add_reader`, `add_writer`).

    ports = MasterPorts(master)    # the master's one registry of the ports it serves itself
    ports.serve(port)              # port is already listening (startListening)
    ports.unserve(port)            # on removePort / shutdown: its connections close

Each protocol gets the master as `protocol.master` before `makeConnection`, so it can reach
the application. The transport it sees has the seed's interface: write, writeSequence,
loseConnection (after pending data), abortConnection, getPeer, getHost.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from forkd.control.accepting import AcceptPause
from forkd.control.api import MasterAPI
from forkd.control.writer import BufferedWriter
from forkd.ports import port_key
from forkd.protocol import ConnectionDone, ConnectionLost, address_tuple

log = logging.getLogger("forkd.masterports")

MAX_CONNECTIONS = 16  # an admin shell, not a service: a flood must not cost the master fds
MAX_WRITE_BUFFER = 4 << 20
READ_SIZE = 65536


class MasterPorts:
    """The ports the master serves in its own loop, by key: one registry, whoever asks."""

    def __init__(self, master: MasterAPI) -> None:
        self.master = master
        self.servers: dict[str, MasterPortServer] = {}

    def __contains__(self, port: Any) -> bool:
        return port_key(port) in self.servers

    def serve(self, port: Any) -> MasterPortServer:
        """Accept on `port` (already listening); a server for the same key is replaced."""
        self.unserve(port)
        server = self.servers[port_key(port)] = MasterPortServer(self.master, port)
        server.start()
        return server

    def unserve(self, port: Any) -> None:
        """Stop accepting on `port` and close its connections (the port is the caller's)."""
        server = self.servers.pop(port_key(port), None)
        if server is not None:
            server.stop()

    def close(self) -> None:
        for server in list(self.servers.values()):
            server.stop()
        self.servers.clear()


class MasterConnection:
    """One accepted connection: the transport its protocol sees, driven by the master loop."""

    def __init__(self, server: MasterPortServer, sock: socket.socket, protocol: Any) -> None:
        self.server = server
        self.master = server.master
        self.sock = sock
        self.protocol = protocol
        self.family = sock.family
        self.disconnecting = False
        self.closed = False
        self.output = BufferedWriter(
            self.master,
            sock,
            MAX_WRITE_BUFFER,
            on_error=self._lost,
            on_overflow=self._not_reading,
            on_drained=self._drained,
        )

    # -- the transport interface ----------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        self.output.write(bytes(data))

    def _not_reading(self) -> None:
        log.warning("master port %s: peer does not read; closing", self.server.key)
        self.abortConnection()

    def _drained(self) -> None:
        if self.disconnecting:
            self._lost(None)

    def writeSequence(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def loseConnection(self) -> None:
        self.disconnecting = True
        if not self.output.pending:
            self._lost(None)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.output.discard()
        self._lost(None)

    def getPeer(self) -> tuple[Any, ...]:
        with contextlib.suppress(OSError):
            return address_tuple(self.sock.getpeername(), self.family)
        return ("INET", "", 0)

    def getHost(self) -> tuple[Any, ...]:
        with contextlib.suppress(OSError):
            return address_tuple(self.sock.getsockname(), self.family)
        return ("INET", "", 0)

    # -- driven by the loop ---------------------------------------------------------------
    def start(self) -> None:
        self.master.add_reader(self.sock, self.doRead)
        self.protocol.makeConnection(self, self.server.port)

    def doRead(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._lost(error)
            return
        if not data:
            self._lost(None)
            return
        try:
            self.protocol.dataReceived(data)
        except Exception:  # a protocol bug costs its connection, never the master
            log.exception(
                "master port %s: protocol failed; closing the connection", self.server.key
            )
            self.abortConnection()

    def _lost(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.output.close()
        with contextlib.suppress(Exception):
            self.master.remove_reader(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.connections.pop(self, None)
        if error is None:
            reason: BaseException = ConnectionDone("Connection was closed cleanly.")
        else:
            reason = ConnectionLost(str(error))
        try:
            if getattr(self.protocol, "_lost_takes_reason", True):
                self.protocol.connectionLost(reason)
            else:
                self.protocol.connectionLost()  # the seed's argument-less form
        except Exception:
            log.exception("master port %s: connectionLost failed", self.server.key)


class MasterPortServer:
    """Accepts on one listening port in the master's loop and keeps its connections."""

    def __init__(self, master: MasterAPI, port: Any) -> None:
        self.master = master
        self.port = port
        self.key = port_key(port)
        self.connections: dict[MasterConnection, None] = {}  # ordered: oldest first
        self._listening = False
        self.accept_errors = AcceptPause(
            master, log, f"master port {self.key}", self._pause, self.start
        )

    def start(self) -> None:
        self.master.add_reader(self.port, self.doRead)
        self._listening = True

    def _pause(self) -> None:
        self._listening = False
        self.master.remove_reader(self.port)

    def doRead(self) -> None:
        for sock, address in self.accept_errors.batch(self.port.socket, 8):
            try:
                self._admit(sock, address)
            except Exception:
                log.exception("master port %s: could not start a connection", self.key)
                with contextlib.suppress(OSError):
                    sock.close()

    def _admit(self, sock: socket.socket, address: Any) -> None:
        if len(self.connections) >= MAX_CONNECTIONS and not self._evict_one():
            sock.close()
            return
        sock.setblocking(False)
        protocol = self.port.factory.buildProtocol(address_tuple(address, sock.family))
        if protocol is None:
            sock.close()
            return
        protocol.master = self.master
        connection = MasterConnection(self, sock, protocol)
        self.connections[connection] = None
        connection.start()

    def _evict_one(self) -> bool:
        """Make room by closing the oldest connection whose protocol says it may go
        (`evictable()`: the telnet shell before login). Why: otherwise a few idle
        connections that never log in fill every slot and lock the administrator out."""
        for connection in list(self.connections):  # insertion order: the oldest first
            evictable = getattr(connection.protocol, "evictable", None)
            if evictable is not None and evictable():
                log.warning("master port %s: full; closing an idle connection", self.key)
                connection.abortConnection()
                return True
        return False

    def stop(self) -> None:
        """Stop accepting and close every connection (the port itself is the caller's)."""
        self.accept_errors.cancel()
        if self._listening:
            self._listening = False
            with contextlib.suppress(Exception):
                self.master.remove_reader(self.port)
        for connection in list(self.connections):
            connection.abortConnection()
