"""The access log (forkd.web.accesslog): buffering, reopening, the request's duration, its
cost when off, and a real `forkd serve` logging a slow request to a file."""

from __future__ import annotations

import json
import pickle
import re
from typing import Any

import pytest

from forkd.testing import Clock, StringTransport, connect
from forkd.web import accesslog, resource, server
from forkd.web.accesslog import AccessLog
from forkd.web.hello import Hello


class Later(resource.Resource):
    """Answers only when the test says so (NOT_DONE_YET), keeping the requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        return resource.NOT_DONE_YET


def logged_site(tmp_path: Any, root: resource.Resource, **settings: Any) -> Any:
    site = server.Site(root, logPath=str(tmp_path / "access.log"), **settings)
    site.clock = Clock()
    site.startFactory()
    return site


def test_combined_format_is_buffered_and_flushed_by_the_site_s_timer(tmp_path: Any) -> None:
    path = tmp_path / "access.log"
    site = logged_site(tmp_path, Hello())
    channel = connect(site, StringTransport())
    channel.dataReceived(
        b'GET /x?y=1 HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: t "q"\r\n\r\n'
    )
    assert path.read_text() == ""  # buffered
    site.clock.advance(1.0)  # the site's timer flushes it
    text = path.read_text()
    assert re.fullmatch(
        r"127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"GET /x\?y=1 HTTP/1\.1" 200 14 "http://r/" "t \\x22q\\x22"\n',
        text,
    ), text
    site.stopFactory()


def test_reopen_writes_to_the_new_file(tmp_path: Any) -> None:
    log = AccessLog(str(tmp_path / "a.log"))
    log._buffer.append("one\n")
    (tmp_path / "a.log").rename(tmp_path / "a.log.1")
    log.reopen()
    log._buffer.append("two\n")
    log.close()
    assert (tmp_path / "a.log.1").read_text() == "one\n"
    assert (tmp_path / "a.log").read_text() == "two\n"


class FakePerfCounter:
    """time.perf_counter as forkd.web.request and .response read it, moved by the test;
    it counts its readings."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return self.now

    def install(self, monkeypatch: Any) -> FakePerfCounter:
        from forkd.web import request, response

        monkeypatch.setattr(request, "perf_counter", self)
        monkeypatch.setattr(response, "perf_counter", self)
        return self


def test_duration_runs_from_the_headers_being_complete_to_the_response_finishing(
    tmp_path: Any, monkeypatch: Any
) -> None:
    clock = FakePerfCounter().install(monkeypatch)
    later = Later()
    site = logged_site(tmp_path, later, logFormat="%(r)s %(D)s")
    channel = connect(site, StringTransport())
    channel.dataReceived(b"GET /slow HTTP/1.1\r\n")  # the first byte: not yet the start
    clock.now = 101.0
    channel.dataReceived(b"Host: h\r\n\r\n")  # headers complete: the start
    [request] = later.requests
    clock.now = 103.5
    request.write(b"part")
    clock.now = 104.25
    request.finish()  # the end
    site.stopFactory()
    assert (tmp_path / "access.log").read_text() == "GET /slow HTTP/1.1 3250000\n"


def test_the_log_reads_no_clock_of_its_own(tmp_path: Any, monkeypatch: Any) -> None:
    """The duration is the one the metrics measure anyway: two readings a request, with
    an access log or without one."""
    readings = []
    for path in (None, str(tmp_path / "access.log")):
        clock = FakePerfCounter().install(monkeypatch)
        site = server.Site(Hello(), logPath=path, logFormat="%(D)s %(L)s %(T)s")
        site.clock = Clock()
        site.startFactory()
        connect(site, StringTransport()).dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 3)
        site.stopFactory()
        readings.append(clock.readings)
    assert readings == [6, 6]
    assert (tmp_path / "access.log").read_text() == "0 0.000000 0\n" * 3


def test_the_format_is_compiled_once_per_log_not_per_request(
    tmp_path: Any, monkeypatch: Any
) -> None:
    compiled: list[str] = []
    real = accesslog.compile_format

    def counting(spec: str) -> Any:
        compiled.append(spec)
        return real(spec)

    monkeypatch.setattr(accesslog, "compile_format", counting)
    site = logged_site(tmp_path, Hello(), logFormat="json")
    channel = connect(site, StringTransport())
    channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n" * 3)
    site.stopFactory()
    assert compiled == ["json"]
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert [json.loads(text)["path"] for text in lines] == ["/1", "/1", "/1"]


def test_a_line_that_cannot_be_made_never_breaks_the_response(tmp_path: Any, caplog: Any) -> None:
    site = logged_site(tmp_path, Hello())

    def broken(request: Any, now: float, took: float) -> str:
        raise RuntimeError("formatter bug")

    site._accessLog.format = broken
    transport = StringTransport()
    channel = connect(site, transport)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 200 OK") == 2
    assert "formatter bug" in caplog.text
    site.stopFactory()


def test_the_format_is_a_site_attribute_that_pickles_and_is_checked_when_the_log_opens(
    tmp_path: Any,
) -> None:
    site = server.Site(Hello(), logPath=str(tmp_path / "a.log"), logFormat="json:x-id")
    copy = pickle.loads(pickle.dumps(site))
    assert copy.logFormat == "json:x-id" and copy.logPath == site.logPath
    assert "logFormat" not in pickle.loads(pickle.dumps(server.Site(Hello()))).__dict__
    copy.logFormat = "%(nope)s"  # a live edit from forkctl shell that the taps did not check
    with pytest.raises(ValueError, match="unknown atom"):
        copy.startFactory()  # the new worker fails to boot: the restart rolls back
