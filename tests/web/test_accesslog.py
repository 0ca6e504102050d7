"""The access log (forkd.web.accesslog): buffering, reopening, the request's duration, its
cost when off, and a real `forkd serve` logging a slow request to a file."""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from forkd.testing import Clock, StringTransport, connect
from forkd.web import accesslog, resource, server
from forkd.web.accesslog import AccessLog
from forkd.web.hello import Hello
from tests.webserving import ResponseReader, forkd_serve, get


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


# -- the options: web, hello, wsgi and asgi taps, forkd serve --------------------------------
def tap_options(name: str, *argv: str) -> Any:
    from forkd import taps

    config = taps.make_options(taps.load(name), name)
    config.parseOptions(list(argv))
    return config


def test_the_taps_take_gunicorn_s_names_and_the_old_access_log(
    tmp_path: Any, monkeypatch: Any
) -> None:
    from forkd.app import Application
    from workers import hello, web

    monkeypatch.chdir(tmp_path)
    for module in (web, hello):
        name = module.__name__.rpartition(".")[2]
        config = tap_options(name, "--access-logfile", "a.log", "--access-logformat", "json")
        [(_, site)] = module.getPorts(Application(name), config)
        copy = pickle.loads(pickle.dumps(site))  # as it goes into the tap
        assert copy.logPath == str(tmp_path / "a.log")  # absolute: a worker's cwd differs
        assert copy.logFormat == "json"
        config = tap_options(name, "--access-log", "-")
        [(_, site)] = module.getPorts(Application(name), config)
        assert site.logPath == "-" and site.logFormat == server.Site.logFormat
        [(_, site)] = module.getPorts(Application(name), tap_options(name))
        assert site.logPath is None


WSGI_APP = "def app(environ, start_response):\n    return []\n"


@pytest.mark.parametrize("name", ["wsgi", "asgi"])
def test_the_hosting_taps_put_the_log_options_on_their_site(tmp_path: Any, name: str) -> None:
    from forkd.app import Application
    from forkd.taps import load

    (tmp_path / "tinyapp.py").write_text(WSGI_APP)
    common = ["--app", "tinyapp:app", "--pythonpath", str(tmp_path)]
    config = tap_options(name, *common, "--access-log", str(tmp_path / "x.log"))
    config2 = tap_options(name, *common, "--access-logformat", "%(h)s %(D)s")
    [(_, site)] = load(name).getPorts(Application(name), config)
    [(_, site2)] = load(name).getPorts(Application(name), config2)
    assert site.logPath == str(tmp_path / "x.log") and site.logFormat == server.Site.logFormat
    assert site2.logPath is None and pickle.loads(pickle.dumps(site2)).logFormat == "%(h)s %(D)s"


@pytest.mark.parametrize("name", ["web", "hello", "wsgi"])
def test_a_bad_format_is_a_usage_error_when_the_tap_is_made(name: str, tmp_path: Any) -> None:
    from forkd.usage import UsageError

    (tmp_path / "tinyapp.py").write_text(WSGI_APP)
    common = ["--app", "tinyapp:app", "--pythonpath", str(tmp_path)] if name == "wsgi" else []
    with pytest.raises(UsageError, match=r"'%\(x\)s': unknown atom %\(x\)s \(known: h l u"):
        tap_options(name, *common, "--access-logformat", "%(x)s")


def test_forkd_serve_takes_the_log_options_and_refuses_a_bad_format(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    from forkd.cli import forkd as forkd_cli
    from forkd.cli import parse_command
    from workers.site_options import site_settings

    monkeypatch.chdir(tmp_path)
    argv = ["serve", "app:app", "--access-logfile", "a.log", "--access-logformat", "json:x-id"]
    args = parse_command(forkd_cli.parser(), argv)
    settings = site_settings(vars(args))
    assert settings["logPath"] == str(tmp_path / "a.log") and settings["logFormat"] == "json:x-id"
    assert "logPath" not in site_settings(vars(parse_command(forkd_cli.parser(), argv[:2])))
    with pytest.raises(SystemExit) as exit_info:
        forkd_cli.main(["serve", "--help"])  # argparse %-formats help: the atoms survive it
    assert exit_info.value.code == 0 and '"%(a)s"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        forkd_cli.main(["serve", "app:app", "--access-logformat", '"%(r)s" %(z)s'])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("forkd serve: error: argument --access-logformat: ")
    assert error.endswith(
        "unknown atom %(z)s (known: h l u t r m U q H s B b f a T M D L p, "
        "{header}i, {header}o, {variable}e)"
    )


# -- a real forkd serving a WSGI application -------------------------------------------
SLOW_APP = """
import os
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_WAIT = 0.2


def app(environ, start_response):
    waited = 0.0
    if environ["PATH_INFO"] == "/slow":
        # the test lets this request go (the file "release") once it knows it started
        open(os.path.join(HERE, "started"), "w").close()
        begun = time.perf_counter()
        gate = threading.Event()
        # and takes at least MIN_WAIT: a lower bound for the duration that does not hang
        # on how fast the test is
        while not os.path.exists(os.path.join(HERE, "release")) or (
            time.perf_counter() - begun < MIN_WAIT
        ):
            gate.wait(0.01)
        waited = time.perf_counter() - begun
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Waited", "%.6f" % waited)])
    return [b"%.6f" % waited]
"""


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["gunicorn", "json"])
def test_forkd_serve_logs_a_slow_request_s_duration_to_a_file(tmp_path: Any, kind: str) -> None:
    from forkd.testing import free_port, wait_for

    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    log = tmp_path / "logs" / "access.log"
    log.parent.mkdir()
    spec = "json:x-request-id" if kind == "json" else '%(r)s %(s)s %(D)s "%({x-request-id}i)s"'
    port = free_port()
    args = ["slowapp:app", "--bind", f"127.0.0.1:{port}", "-w", "1"]
    args += ["--access-logfile", "logs/access.log", "--access-logformat", spec]
    with answering(tmp_path, args, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Request-Id: r-1\r\nConnection: close\r\n\r\n"
            )
            wait_for(lambda: (tmp_path / "started").exists(), message="the app to start")
            (tmp_path / "release").touch()
            response = ResponseReader(sock).read()
        assert response.status == 200
        waited = float(response.body)  # what the application itself measured
        assert waited >= 0.2
        lines = wait_for(lambda: slow_lines(log), 10, message=lambda: log_tail(log))
    [text] = lines
    if kind == "json":
        got = json.loads(text)
        assert got["status"] == 200 and got["headers"] == {"x-request-id": "r-1"}
        assert got["duration_ms"] >= waited * 1000
    else:
        request_line, status, micros, request_id = text.rsplit(" ", 3)
        assert (request_line, status, request_id) == ("GET /slow HTTP/1.1", "200", '"r-1"')
        assert int(micros) >= waited * 1_000_000


def slow_lines(log: Any) -> list[str]:
    if not log.exists():
        return []
    return [text for text in log.read_text().splitlines() if "/slow" in text]


def log_tail(log: Any) -> str:
    return f"a /slow line in {log}: {log.read_text()[-500:] if log.exists() else 'no file'}"


@contextlib.contextmanager
def answering(directory: Any, args: list[str], port: int) -> Iterator[None]:
    """`forkd serve ARGS`, once it answers on `port` (a /fast request, logged too)."""
    from forkd.testing import wait_for

    def answers() -> bool:
        try:
            return get(port, b"/fast").status == 200
        except OSError:
            return False

    with forkd_serve(directory, *args):
        wait_for(answers, 30, message="forkd serve to answer")
        yield
