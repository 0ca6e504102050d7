"""forkd.web.handoff.Handoff: a response made in a thread, written by the loop, on a real
HTTPChannel over a StringTransport. The loop is a fake that keeps what the thread hands
it until the test runs it; `channel.pause_writing()` plays a transport whose buffer is
over its high-water mark, `resume_writing()` a client that caught up."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest

from forkd.testing import Clock, StringTransport, connect, disconnect, wait_for
from forkd.web import server
from forkd.web.handoff import ClientGone, Handoff
from forkd.web.resource import NOT_DONE_YET, Resource
from tests.webserving import ResponseReader


class FakeLoop:
    """call_soon_threadsafe from any thread; `run()` runs what came, in the test's."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
        self.wakeups = 0

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        self.wakeups += 1
        self.calls.put(lambda: callback(*args))

    def run(self) -> None:
        while True:
            try:
                call = self.calls.get_nowait()
            except queue.Empty:
                return
            call()


class Held(Resource):
    """Answers nothing itself: the test's Handoff does."""

    isLeaf = True
    request: Any = None

    def render_GET(self, request: Any) -> Any:
        self.request = request
        return NOT_DONE_YET


class Setup:
    def __init__(self, **handoff: Any) -> None:
        resource = Held()
        site = server.Site(resource)
        site.clock = Clock()
        self.transport = StringTransport()
        self.channel = connect(site, self.transport)
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.request = resource.request
        self.loop = FakeLoop()
        self.freed = 0
        self.handoff = Handoff(self.request, self.loop, self.threadFree, **handoff)

    def threadFree(self) -> None:
        self.freed += 1

    def response(self) -> Any:
        class Wire:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def recv(self, size: int) -> bytes:
                data, self.data = self.data[:size], self.data[size:]
                return data

        return ResponseReader(Wire(self.transport.value())).read()  # type: ignore[arg-type]


def test_a_small_response_costs_the_loop_one_wake_up() -> None:
    setup = Setup()
    output = setup.handoff
    output.head("200 OK", [("Content-Type", "text/plain")])
    for piece in (b"one ", b"two ", b"three"):
        output.data(piece)
    output.end()
    assert setup.loop.wakeups == 1
    setup.loop.run()
    response = setup.response()
    assert response.status == 200 and response.body == b"one two three"
    assert setup.request.finished and setup.freed == 1


def test_a_slow_client_costs_a_spool_and_frees_the_thread_at_once() -> None:
    """The transport is full from the start: the first flush writes (a buffer at most),
    the handoff registers as the channel's producer and is paused at once, and the rest
    of the body waits in the spool, partly on disk; the thread is told it is free, and
    the body goes out, in order, when the client catches up."""
    setup = Setup(bufferSize=1000, spoolSize=1 << 20)
    setup.channel.pause_writing()
    output = setup.handoff
    output.head("200 OK", [])
    body = b"".join(b"%06d," % n for n in range(5000))
    for start in range(0, len(body), 700):
        output.data(body[start : start + 700])
        setup.loop.run()  # the loop takes each piece (the thread waits while it is behind)
    output.end()
    setup.loop.run()
    assert len(setup.transport.value()) < 1000, "no more than the first piece written"
    assert setup.freed == 1 and not setup.request.finished
    spool = output._spool
    assert spool is not None and spool.onDisk > 0 and len(spool) == len(body) - 700
    setup.channel.resume_writing()
    response = setup.response()
    assert response.body == body and setup.request.finished
    assert output._spool is None and setup.channel._producer is None


def test_only_a_full_spool_holds_the_thread_until_the_client_takes_some() -> None:
    setup = Setup(bufferSize=1000, spoolSize=50_000)
    setup.channel.pause_writing()
    output = setup.handoff
    pieces = [bytes([65 + n % 26]) * 10_000 for n in range(12)]
    done: list[str] = []

    def application() -> None:
        output.head("200 OK", [("Content-Length", str(sum(map(len, pieces))))])
        for piece in pieces:
            output.data(piece)
        output.end()
        done.append("returned")

    thread = threading.Thread(target=application)
    thread.start()

    def waiting() -> bool:
        setup.loop.run()
        return output.threadWaiting

    wait_for(waiting, 5, message="the thread to wait on the full spool")
    assert not done
    setup.channel.resume_writing()  # the client reads: the spool drains, the thread goes on

    def returned() -> bool:
        setup.loop.run()  # what it puts next is written straight away now
        return bool(done)

    wait_for(returned, 5, message="the application to return")
    thread.join(5)
    setup.loop.run()
    assert setup.freed == 1
    assert setup.response().body == b"".join(pieces)


def test_the_thread_gets_no_more_than_a_buffer_ahead_of_the_loop() -> None:
    """However fast the application, what waits for the loop to take it is one buffer:
    the thread waits a moment (the loop is not run here until it does)."""
    setup = Setup(bufferSize=100_000, spoolSize=1 << 30)
    output = setup.handoff
    put: list[int] = []

    def application() -> None:
        output.head("200 OK", [])
        for n in range(10):
            output.data(b"z" * 60_000)
            put.append(n)
        output.end()

    thread = threading.Thread(target=application)
    thread.start()
    wait_for(lambda: output.threadAhead, 5, message="the thread to wait for the loop")
    assert put == [0], "the second piece took it over the buffer"

    def returned() -> bool:
        setup.loop.run()
        return len(put) == 10

    wait_for(returned, 5, message="the application to return")
    thread.join(5)
    setup.loop.run()
    assert setup.response().body == b"z" * 600_000 and setup.freed == 1


def test_a_client_gone_stops_the_application_and_still_frees_the_thread() -> None:
    setup = Setup(bufferSize=10_000, spoolSize=50_000)
    setup.channel.pause_writing()
    output = setup.handoff
    output.head("200 OK", [])
    output.data(b"x" * 5000)
    setup.loop.run()  # written: the producer is registered, and paused
    output.data(b"x" * 5000)
    setup.loop.run()  # spooled
    disconnect(setup.channel)
    with pytest.raises(ClientGone):
        output.data(b"more")
    output.end(ok=True)
    setup.loop.run()
    assert setup.freed == 1 and output._spool is None


def test_a_thread_waiting_on_a_full_spool_is_woken_when_the_client_goes() -> None:
    setup = Setup(bufferSize=1000, spoolSize=20_000)
    setup.channel.pause_writing()
    output = setup.handoff
    raised: list[BaseException] = []

    def application() -> None:
        try:
            output.head("200 OK", [])
            while True:
                output.data(b"y" * 10_000)
        except ClientGone as error:
            raised.append(error)
        output.end()

    thread = threading.Thread(target=application)
    thread.start()

    def waiting() -> bool:
        setup.loop.run()
        return output.threadWaiting

    wait_for(waiting, 5, message="the thread to wait on the full spool")
    disconnect(setup.channel)  # the send timeout aborts it, say
    thread.join(5)
    setup.loop.run()
    assert not thread.is_alive() and len(raised) == 1 and setup.freed == 1


def test_a_failure_before_any_output_is_a_500() -> None:
    setup = Setup()
    setup.handoff.head("200 OK", [])
    setup.handoff.end(ok=False)
    setup.loop.run()
    assert setup.response().status == 500 and setup.freed == 1
