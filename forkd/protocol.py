"""Protocol, Factory and the transport a protocol sees.

These are the seed's names ("Writing Servers in Twisted") running on asyncio. A forkd
`Protocol` *is* an asyncio protocol: the event loop calls `data_received`, which for every
subclass is the subclass's own `dataReceived` function (aliased at class creation), and the
protocol's `transport.write` is the loop transport's bound `write`. So the hot path
(`dataReceived` -> `transport.write`) runs no forkd code at all.

The seed's connectionLost took no argument; Twisted later added `reason`. Both work: the
arity of the override is read once, when the class is created.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from forkd import tlsclose

#: upper bounds (seconds) of the request-duration histogram: prometheus_client's defaults
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ConnectionDone(Exception):
    """The connection was closed cleanly (the `reason` given to connectionLost)."""


class ConnectionLost(Exception):
    """The connection was closed uncleanly; `__cause__` holds the OS error, if any."""


class ConnectionStats:
    """Per-process connection bookkeeping read by the worker (heartbeats, graceful drain).

    One instance per process (`stats` below): protocols add themselves when a connection is
    made and remove themselves when it is lost, and HTTP-like protocols count requests and
    their responses (by status class, and a duration histogram). The worker sends
    `metrics()` to the master with each heartbeat; the master adds up its workers (and
    keeps what exited ones had served) for `/metrics`. Every count is a list element or an
    attribute: the hot path pays an increment, never a lookup by name.
    """

    __slots__ = (
        "open",
        "accepted",
        "requests",
        "draining",
        "shuttingDown",
        "responses",
        "latency",
        "latencySum",
        "byPort",
        "probes",
    )

    def __init__(self) -> None:
        self.open: set[Protocol] = set()
        self.accepted = 0
        self.requests = 0
        # Set by the worker when a graceful stop begins: a connection the event loop had
        # already accepted but not yet handed to its protocol is told to drain on arrival.
        self.draining = False
        # Set when the master says the whole server is stopping (not this worker alone being
        # replaced): long-lived protocols tell their peers "going away", not "restarting".
        self.shuttingDown = False
        self.responses = [0] * 6  # by status class: [code // 100]; [0] for nonsense codes
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket; the last is +Inf
        self.latencySum = 0.0
        self.byPort: dict[Any, list[int]] = {}  # port -> [connections, requests]
        # callables a resource registers, returning gauges of its own (busy WSGI threads)
        self.probes: list[Callable[[], dict[str, float]]] = []

    def countsFor(self, port: Any) -> list[int]:
        """The [connections, requests] counters of `port` (made on first use)."""
        counts = self.byPort.get(port)
        if counts is None:
            counts = self.byPort[port] = [0, 0]
        return counts

    def responded(self, code: int, seconds: float | None = None) -> None:
        """One response: its status class, and its duration if it had a request."""
        self.responses[code // 100 if 100 <= code < 600 else 0] += 1
        if seconds is not None:
            self.latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latencySum += seconds

    def metrics(self) -> dict[str, float]:
        """Every count as one flat JSON-able mapping, `name` or `name|label`: counters
        only ever rise in a process, gauges are the present value (see
        forkd.supervisor.metrics for which is which)."""
        out: dict[str, float] = {
            "accepted": self.accepted,
            "requests": self.requests,
            "connections": len(self.open),
            "latency_sum": self.latencySum,
        }
        for kind, count in enumerate(self.responses):
            if count:
                out[f"responses|{kind}xx" if kind else "responses|other"] = count
        for index, count in enumerate(self.latency):
            if count:
                bound = LATENCY_BUCKETS[index] if index < len(LATENCY_BUCKETS) else "+Inf"
                out[f"latency|{bound}"] = count
        open_by_port: dict[Any, int] = {}
        in_flight = 0
        for protocol in self.open:
            open_by_port[protocol.server] = open_by_port.get(protocol.server, 0) + 1
            in_flight += getattr(protocol, "_active", None) is not None  # an HTTP request
        out["in_flight"] = in_flight
        for port, (connections, requests) in self.byPort.items():
            key = getattr(port, "key", None)
            if key is not None:
                out[f"port_accepted|{key}"] = connections
                out[f"port_requests|{key}"] = requests
                out[f"port_connections|{key}"] = open_by_port.get(port, 0)
        for probe in self.probes:
            try:
                out.update(probe())
            except Exception:  # a gauge must never stop the heartbeat
                log.exception("metrics probe %r failed", probe)
        return out


stats = ConnectionStats()

log = logging.getLogger("forkd.protocol")


def _ignore(*args: Any) -> None:
    """What a transport's write/close methods become once the connection is lost: Twisted
    ignores them, while uvloop would raise RuntimeError from a late callback's write."""


def address_tuple(address: Any, family: int | None = None) -> tuple[Any, ...]:
    """Turn a socket address into the seed's tuple: ('INET', host, port), ('INET6', ...),
    ('UNIX', path)."""
    if isinstance(address, tuple):
        if family == socket.AF_INET6 or (family is None and len(address) == 4):
            return ("INET6", address[0], address[1])
        return ("INET", address[0], address[1])
    if family in (socket.AF_INET, socket.AF_INET6):
        # an IP socket whose peer was gone before it could be asked: no address, and not
        # the UNIX peer it would otherwise pass for (those are trusted proxies)
        return ("INET6" if family == socket.AF_INET6 else "INET", "", 0)
    if isinstance(address, bytes):
        address = address.decode("utf-8", "surrogateescape")
    return ("UNIX", address or "")


class Transport:
    """The transport a forkd protocol sees, over an asyncio transport.

    `write`, `writeSequence`, `loseConnection` and `abortConnection` are the underlying
    transport's own bound methods (no Python layer on the hot path); `write` raises TypeError
    for str as every asyncio transport does. `loseConnection` closes once pending data is
    flushed. The transport is also the producer of the data it reads: `pauseProducing` stops
    reading from the peer, as in Twisted.
    """

    __slots__ = (
        "_transport",
        "write",
        "writeSequence",
        "loseConnection",
        "abortConnection",
        "pauseProducing",
        "resumeProducing",
        "producer",
        "_streaming",
        "_write_paused",
        "_peer",
    )

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.write = transport.write  # type: ignore[attr-defined]
        self.writeSequence = transport.writelines  # type: ignore[attr-defined]
        self.loseConnection = transport.close
        self.abortConnection = transport.abort  # type: ignore[attr-defined]
        self.pauseProducing = transport.pause_reading  # type: ignore[attr-defined]
        self.resumeProducing = transport.resume_reading  # type: ignore[attr-defined]
        self.producer: Any = None
        self._streaming = True
        self._write_paused = False
        self._peer: tuple[Any, ...] | None = None
        if transport.get_extra_info("sslcontext") is not None:
            self.loseConnection = self._loseTLS

    def _loseTLS(self) -> None:
        """loseConnection over TLS: flush, close_notify, and no wait for the peer's own
        once everything is delivered (forkd.tlsclose)."""
        tlsclose.close(self._transport, lambda: self.loseConnection is _ignore)

    def getPeer(self) -> tuple[Any, ...]:
        """The peer as ('INET', host, port), ('INET6', host, port) or ('UNIX', path)."""
        if self._peer is None:
            self._peer = self._address("peername")
        return self._peer

    def getHost(self) -> tuple[Any, ...]:
        """This end of the connection, in the same tuple form as getPeer."""
        return self._address("sockname")

    def _address(self, which: str) -> tuple[Any, ...]:
        sock = self._transport.get_extra_info("socket")
        family = sock.family if sock is not None else None
        return address_tuple(self._transport.get_extra_info(which), family)

    @property
    def disconnecting(self) -> bool:
        """True once loseConnection (or abort) has been called or the peer has gone."""
        return self._transport.is_closing()

    def writeEOF(self) -> None:
        """Half-close: send FIN after pending data, keep reading (HTTP's lingering close)."""
        if self._transport.can_write_eof():  # type: ignore[attr-defined]
            self._transport.write_eof()  # type: ignore[attr-defined]

    def getWriteBufferSize(self) -> int:
        """Bytes written but not yet accepted by the kernel."""
        return int(self._transport.get_write_buffer_size())  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self.abortConnection()

    def _lost(self) -> None:
        """The connection is gone: later writes and closes do nothing (as in Twisted), and a
        registered producer is stopped so it does not wait for a resume that never comes."""
        self.write = self.writeSequence = self.loseConnection = _ignore
        self.abortConnection = self.pauseProducing = self.resumeProducing = _ignore
        producer = self.producer
        if producer is not None:
            self.producer = None
            try:
                producer.stopProducing()
            except Exception:
                log.exception("Error in %r.stopProducing", producer)

    def registerProducer(self, producer: Any, streaming: bool = True) -> None:
        """Have `producer` paused while the write buffer is above the high-water mark; one
        registered after the connection is lost is stopped at once, as in Twisted."""
        if self.write is _ignore:
            producer.stopProducing()
            return
        self.producer = producer
        self._streaming = streaming
        if not streaming:  # a pull producer writes when asked: ask while we can take more
            asyncio.get_running_loop().call_soon(self._pull, producer)

    def _pull(self, producer: Any) -> None:
        if self.producer is not producer or self._write_paused or self.write is _ignore:
            return
        try:
            producer.resumeProducing()
        except Exception:
            log.exception("Error in %r.resumeProducing", producer)
            self.abortConnection()
            return
        if self.producer is producer:
            asyncio.get_running_loop().call_soon(self._pull, producer)

    def unregisterProducer(self) -> None:
        self.producer = None
        self._streaming = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(enabled))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


def _takes_reason(method: Callable[..., Any]) -> bool:
    """Whether a connectionLost override accepts the `reason` argument (Twisted) or not (seed)."""
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [
        p for p in parameters[1:] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return bool(positional) or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def _half_closed(self: Any) -> bool:
    """eof_received of a protocol with readConnectionLost (Twisted's IHalfCloseableProtocol):
    the peer's EOF closes only our reading side; True tells the loop to keep writing."""
    self.readConnectionLost()
    return True


class Protocol(asyncio.Protocol):
    """A connection handler with the seed's interface.

    Override `connectionMade`, `dataReceived(data)` and `connectionLost(reason)` (or the seed's
    `connectionLost(self)`). `connectionDraining` is called once when the worker starts a
    graceful stop; the default does nothing, so the worker waits (up to its graceful timeout)
    for the peer to finish. Protocols that know when they are idle (HTTP) close sooner.
    """

    factory: Any = None
    connected = 0
    transport: Any = None
    server: Any = None
    _lost_takes_reason = True
    _error: Exception | None = None  # what connectionMade raised, for connectionLost's reason

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "dataReceived" in cls.__dict__ and "data_received" not in cls.__dict__:
            cls.data_received = cls.__dict__["dataReceived"]
        if "connectionLost" in cls.__dict__:
            cls._lost_takes_reason = _takes_reason(cls.__dict__["connectionLost"])
        if "readConnectionLost" in cls.__dict__ and "eof_received" not in cls.__dict__:
            cls.eof_received = _half_closed  # type: ignore[method-assign]

    # -- the seed's interface ----------------------------------------------------------
    def makeConnection(self, transport: Any, server: Any = None) -> None:
        self.connected = 1
        self.transport = transport
        if server is not None:
            self.server = server
        self.connectionMade()

    def connectionMade(self) -> None:
        """Called when the connection is established: greet, set up per-connection state."""

    def dataReceived(self, data: bytes) -> None:
        """Called with each chunk of bytes the peer sends."""

    def connectionLost(self, reason: BaseException | None = None) -> None:
        """Called once when the connection is gone; clean up."""

    def connectionDraining(self) -> None:
        """The worker is stopping gracefully: finish what is in flight, then close."""

    # -- asyncio's interface -------------------------------------------------------------
    data_received = dataReceived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stats.accepted += 1
        stats.open.add(self)
        if self.server is not None:
            stats.countsFor(self.server)[0] += 1
        try:
            self.makeConnection(Transport(transport), self.server)
            if stats.draining:
                self.connectionDraining()
        except Exception as error:
            # Left to the loop, the error would be logged with the connection left open
            # (asyncio) or closed without connection_lost, leaking stats.open (uvloop).
            log.exception("Error in connectionMade of %r", self)
            self._error = error
            transport.abort()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        stats.open.discard(self)
        self.connected = 0
        transport = self.transport
        if isinstance(transport, Transport):
            transport._lost()
        if exc is None:
            exc = self._error
        if exc is None:
            reason: BaseException = ConnectionDone("Connection was closed cleanly.")
        else:
            reason = ConnectionLost(str(exc) or type(exc).__name__)
            reason.__cause__ = exc
        if self._lost_takes_reason:
            self.connectionLost(reason)
        else:
            self.connectionLost()

    def pause_writing(self) -> None:
        transport = self.transport
        producer = transport.producer if transport is not None else None
        if transport is not None:
            transport._write_paused = True
        if producer is not None:
            producer.pauseProducing()
        elif transport is not None:
            transport.pauseProducing()

    def resume_writing(self) -> None:
        transport = self.transport
        producer = transport.producer if transport is not None else None
        if transport is not None:
            transport._write_paused = False
        if producer is not None and not transport._streaming:
            transport._pull(producer)  # a pull producer: ask for the next chunk
        elif producer is not None:
            producer.resumeProducing()
        elif transport is not None and not transport.disconnecting:
            transport.resumeProducing()


class _ProtocolAdapter(Protocol):
    """Runs a duck-typed seed protocol (any object with makeConnection/dataReceived/
    connectionLost, not derived from Protocol) on the event loop."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.data_received = wrapped.dataReceived  # type: ignore[method-assign]
        self._lost_takes_reason = _takes_reason(wrapped.connectionLost)

    def makeConnection(self, transport: Any, server: Any = None) -> None:
        self.transport = transport
        self.wrapped.makeConnection(transport, server)

    def connectionLost(self, reason: BaseException | None = None) -> None:
        if self._lost_takes_reason:
            self.wrapped.connectionLost(reason)
        else:
            self.wrapped.connectionLost()

    def connectionDraining(self) -> None:
        draining = getattr(self.wrapped, "connectionDraining", None)
        if draining is not None:
            draining()


class _BuildOnConnect(asyncio.Protocol):
    """Calls a custom buildProtocol(addr) with the peer's address, then hands the transport to
    the protocol it built. Used only for factories that override buildProtocol, since the
    event loop builds protocols before it knows the address."""

    def __init__(self, factory: Factory, server: Any) -> None:
        self.factory = factory
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        addr = address_tuple(
            transport.get_extra_info("peername"), sock.family if sock is not None else None
        )
        try:
            built = self.factory.buildProtocol(addr)
        except Exception:
            # Left to the loop, the error would be logged and the connection left open.
            log.exception("Error in %r.buildProtocol(%r)", self.factory, addr)
            built = None
        if built is None:
            transport.abort()  # type: ignore[attr-defined]
            return
        protocol = built if isinstance(built, Protocol) else _ProtocolAdapter(built)
        if protocol.server is None:
            protocol.server = self.server
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class Factory:
    """Builds a protocol for each connection on the ports it listens on.

    `protocol` is the class to build; `buildProtocol(addr)` may be overridden and may return
    None to refuse the connection. `doStart`/`doStop` (which call `startFactory`/
    `stopFactory` once however many ports share the factory) run in each worker process,
    never in the master.
    """

    protocol: Any = None
    numPorts = 0
    noisy = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("numPorts", None)
        return state

    def doStart(self) -> None:
        if not self.numPorts:
            self.startFactory()
        self.numPorts += 1

    def doStop(self) -> None:
        if self.numPorts <= 0:
            return
        self.numPorts -= 1
        if not self.numPorts:
            self.stopFactory()

    def startFactory(self) -> None:
        """Set up what every connection shares (opened files, pools): runs in each worker."""

    def stopFactory(self) -> None:
        """Release what startFactory set up."""

    def buildProtocol(self, addr: tuple[Any, ...] | None) -> Any:
        protocol = self.protocol()
        protocol.factory = self
        return protocol

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}>"


def protocol_factory(factory: Factory, server: Any = None) -> Callable[[], asyncio.BaseProtocol]:
    """The zero-argument callable asyncio's create_server wants, for a forkd Factory.

    A factory that keeps the default buildProtocol gets the fast path (the protocol class is
    instantiated directly); one that overrides it is called with the peer's address."""
    if (
        type(factory).buildProtocol is not Factory.buildProtocol
        or not isinstance(factory.protocol, type)
        or not issubclass(factory.protocol, Protocol)
    ):
        return lambda: _BuildOnConnect(factory, server)
    protocol_class = factory.protocol

    def build() -> asyncio.BaseProtocol:
        protocol = protocol_class()
        protocol.factory = factory
        protocol.server = server
        return protocol

    return build
