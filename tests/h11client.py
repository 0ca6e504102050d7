"""A strict HTTP/1.1 client for end-to-end tests: every response is read through h11's
client state machine, on one keep-alive connection.

    with H11Client(port) as client:
        first = client.request("GET", "/hello")
        head = client.request("HEAD", "/hello")
        answers = client.pipeline([("GET", "/a"), ("HEAD", "/b"), ("GET", "/c")])

tests/webserving.py's ResponseReader is forkd's own idea of HTTP framing; h11 is an
independent one (it is httpcore's and so httpx's), so a response that h11 cannot read is
a framing bug however forkd's helpers read it. h11 is told each request it answers, so it
knows that a HEAD, 204 or 304 response has no body: a body sent anyway, a Content-Length
that is wrong either way or a chunked body cut short shows as h11's RemoteProtocolError on
this response or the next one on the connection (or as a read that times out). On top of
h11, `check_framing` refuses what h11 lets through: Content-Length beside
Transfer-Encoding (RFC 9112 6.1), either on a 204 and Transfer-Encoding on a 304 (RFC 9110
8.6, RFC 9112 6.1).

Pipelining: `pipeline` writes every request before reading any response; h11's client
cannot send a request before the last one is answered, so the requests are serialized by
h11 connections of their own, and the one connection that reads is handed each request in
turn as its response comes (which is what tells it HEAD from GET).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any

import h11

TIMEOUT = 10.0

Header = tuple[str, str]
#: (method, target) or (method, target, headers) or (method, target, headers, body)
RequestSpec = tuple[Any, ...]


class H11Response:
    """One response as h11 read it: status, headers (names lower-cased), body, framing."""

    def __init__(self, method: str, response: h11.Response) -> None:
        self.method = method
        self.status: int = response.status_code
        self.reason = bytes(response.reason)
        self.http_version = bytes(response.http_version)
        self.headers: list[tuple[bytes, bytes]] = [(n.lower(), v) for n, v in response.headers]
        self.body = b""
        self.chunks = 0  # Data events that h11 saw begin a chunk of a chunked body
        self.informational: list[int] = []  # 100 Continue and such, before this response
        self.keep_alive = False  # h11's verdict once the response was whole

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, or None."""
        key = name.lower().encode("latin-1")
        values = [value for header, value in self.headers if header == key]
        return values[-1] if values else None

    @property
    def chunked(self) -> bool:
        return (self.header("transfer-encoding") or b"").lower() == b"chunked"

    @property
    def content_length(self) -> int | None:
        value = self.header("content-length")
        return None if value is None else int(value)

    def __repr__(self) -> str:
        return f"<H11Response {self.method} {self.status} {self.headers!r} {self.body[:60]!r}>"


def check_framing(response: H11Response) -> None:
    """AssertionError for the framing errors h11 reads without complaint."""
    length, chunked = response.header("content-length"), response.header("transfer-encoding")
    assert length is None or chunked is None, f"Content-Length with Transfer-Encoding: {response}"
    if response.status == 204:
        assert length is None and chunked is None, f"a 204 with body framing: {response}"
    if response.status == 304:
        assert chunked is None, f"a 304 with Transfer-Encoding: {response}"


def request_event(
    method: str, target: str, host: str, headers: Iterable[Header] = (), body: bytes = b""
) -> h11.Request:
    """The h11 Request for `method target`, with Host and, for a body, its Content-Length
    (unless `headers` frame it already, e.g. Transfer-Encoding: chunked)."""
    fields = [("Host", host), *headers]
    names = {name.lower() for name, _ in fields}
    if body and not names & {"content-length", "transfer-encoding"}:
        fields.append(("Content-Length", str(len(body))))
    return h11.Request(method=method, target=target, headers=fields)


def serialized(event: h11.Request, body: bytes) -> bytes:
    """The bytes of one whole request, as h11 writes it."""
    writer = h11.Connection(h11.CLIENT)
    data = writer.send(event) or b""
    if body:
        data += writer.send(h11.Data(data=body)) or b""
    return data + (writer.send(h11.EndOfMessage()) or b"")


class H11Client:
    """One connection to 127.0.0.1:`port`, kept alive for as long as the server allows."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.host = f"127.0.0.1:{port}"
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.connection = h11.Connection(h11.CLIENT)
        self.answered = 0  # responses read on this one connection
        self.pending: list[tuple[h11.Request, bytes]] = []  # pipelined, not yet read

    def __enter__(self) -> H11Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _event(self, spec: RequestSpec) -> tuple[h11.Request, bytes]:
        defaults = ((), b"")  # the headers and body a shorter spec leaves out
        method, target, headers, body = (*spec, *defaults[len(spec) - 2 :])
        return request_event(method, target, self.host, headers, body), body

    def _expect(self, event: h11.Request, body: bytes) -> bytes:
        """Hand the reading connection the request the next response answers."""
        connection = self.connection
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
        assert connection.our_state is h11.IDLE, (
            f"the server ended keep-alive before {event.method!r} {event.target!r}: "
            f"client {connection.our_state}, server {connection.their_state}"
        )
        data = connection.send(event) or b""
        if body:
            data += connection.send(h11.Data(data=body)) or b""
        return data + (connection.send(h11.EndOfMessage()) or b"")

    def send(
        self, method: str, target: str, headers: Iterable[Header] = (), body: bytes = b""
    ) -> None:
        """Send one request; `receive` (or `receive_head` and the rest) reads its answer."""
        event, body = self._event((method, target, tuple(headers), body))
        self.sock.sendall(self._expect(event, body))

    def request(
        self, method: str, target: str, headers: Iterable[Header] = (), body: bytes = b""
    ) -> H11Response:
        """Send one request and read its response."""
        self.send(method, target, headers, body)
        return self.receive(method)

    def pipeline(self, requests: Sequence[RequestSpec]) -> list[H11Response]:
        """Send every request in one write, then read the responses in order."""
        self.send_pipelined(requests)
        return self.receive_pipelined()

    def send_pipelined(self, requests: Sequence[RequestSpec]) -> None:
        """Write every request at once; `receive_pipelined` reads the answers."""
        events = [self._event(spec) for spec in requests]
        self.sock.sendall(b"".join(serialized(event, body) for event, body in events))
        self.pending.extend(events)

    def receive_pipelined(self) -> list[H11Response]:
        """The answers to every request `send_pipelined` wrote, in order."""
        responses = []
        while self.pending:
            event, body = self.pending.pop(0)
            self._expect(event, body)  # what it would send is already on the wire
            responses.append(self.receive(event.method.decode("ascii")))
        return responses

    def _next(self) -> Any:
        """The next h11 event, reading the socket when h11 needs more (raises on framing
        errors, times out on a body shorter than its Content-Length)."""
        connection = self.connection
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            connection.receive_data(self.sock.recv(65536))

    def receive_head(self, method: str) -> H11Response:
        """Events up to the status line and headers of the answer to `method`."""
        informational: list[int] = []
        while True:
            event = self._next()
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                response = H11Response(method, event)
                response.informational = informational
                return response
            else:  # ConnectionClosed before the response (h11 raises on one cut short)
                raise AssertionError(f"{method}: no response, {event!r} instead")

    def receive_data(self, response: H11Response) -> bytes:
        """The next piece of `response`'s body, or b"" once it has ended."""
        event = self._next()
        if isinstance(event, h11.Data):
            response.body += event.data
            response.chunks += int(event.chunk_start)
            return bytes(event.data)
        assert isinstance(event, h11.EndOfMessage), f"{event!r} in a body"
        response.keep_alive = self.connection.their_state is h11.DONE
        self.answered += 1
        check_framing(response)
        return b""

    def receive(self, method: str) -> H11Response:
        """The whole answer to `method`: h11 raises on any framing error."""
        response = self.receive_head(method)
        while self.receive_data(response):
            pass
        return response

    def closed_by_server(self) -> bool:
        """Whether the server closed the connection, sending nothing more."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
