"""forkd.web.wsgi: real WSGI applications (Flask, and wsgiref's validator) on forkd.web."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

import flask
import pytest

from forkd.web import server
from forkd.web.wsgi import WSGIResource, environ_for
from tests.webserving import (
    ResponseReader,
    count_sendfile,
    forkd_serve,
    get,
    json_from,
    request,
    serving,
)
from tests.webserving import connect as connect_socket


def flask_app() -> flask.Flask:
    app = flask.Flask("forkd-test")

    @app.get("/hello")
    def hello() -> Any:
        return {"hello": "world", "thread": threading.current_thread().name}

    @app.post("/echo")
    def echo() -> Any:
        return {"got": flask.request.get_json(), "length": flask.request.content_length}

    @app.get("/stream")
    def stream() -> Any:
        return flask.Response((b"chunk %d\n" % n for n in range(3)), mimetype="text/plain")

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("the application broke")

    @app.get("/missing")
    def missing() -> Any:
        flask.abort(404)

    return app


@pytest.fixture
def port() -> Iterator[int]:
    with serving(server.Site(WSGIResource(flask_app(), threads=2))) as site:
        yield site.port


def test_flask_json_in_a_thread_of_the_pool(port: int) -> None:
    response = get(port, b"/hello")
    assert response.status == 200
    body = json.loads(response.body)
    assert body["hello"] == "world" and body["thread"].startswith("wsgi")
    assert response.headers[b"content-type"] == b"application/json"


def test_flask_post_json_body(port: int) -> None:
    payload = json.dumps({"a": [1, 2, 3]}).encode()
    response = request(
        port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload),
    )
    assert response.status == 200
    assert json.loads(response.body) == {"got": {"a": [1, 2, 3]}, "length": len(payload)}


def test_a_streamed_response_arrives_whole_and_chunked(port: int) -> None:
    response = get(port, b"/stream")
    assert response.status == 200 and response.body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_an_application_error_is_a_500_and_the_worker_keeps_serving(port: int) -> None:
    assert get(port, b"/boom").status == 500
    assert get(port, b"/missing").status == 404
    assert get(port, b"/hello").status == 200


def test_head_has_no_body(port: int) -> None:
    response = request(port, b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
    assert response.status == 200 and response.body == b""


def test_head_of_a_stream_claims_no_length_that_get_would_not_have(port: int) -> None:
    """Werkzeug drops HEAD's body itself: forkd must not measure that nothing and send
    Content-Length: 0 for a response whose GET is chunked (RFC 9110 8.6)."""
    head = request(port, b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
    assert head.status == 200 and head.body == b""
    assert b"content-length" not in head.headers, head
    assert head.headers[b"transfer-encoding"] == b"chunked"
    sized = request(port, b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
    assert int(sized.headers[b"content-length"]) == len(get(port, b"/hello").body)


def simple_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = b"%s %s %s" % (
        environ["REQUEST_METHOD"].encode(),
        environ["PATH_INFO"].encode(),
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)),
    )
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def test_pep_3333_holds_under_wsgiref_validator() -> None:
    """wsgiref's validator asserts the environ, start_response and iterable rules."""
    with serving(server.Site(WSGIResource(validator(simple_app)))) as site:
        assert get(site.port, b"/a/b?q=1").body == b"GET /a/b "
        posted = request(site.port, b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert posted.status == 200 and posted.body == b"POST /p abc"


def test_the_environ_keeps_content_headers_out_of_http_keys() -> None:
    class Fake:
        method, path, query, clientproto = b"POST", b"/x", b"a=1", b"HTTP/1.1"
        prepath: list[bytes] = []
        content = None

        class requestHeaders:  # noqa: N801
            @staticmethod
            def getAllRawHeaders() -> Any:
                return iter([(b"content-type", [b"text/plain"]), (b"x-thing", [b"1", b"2"])])

        def getHost(self) -> Any:
            return ("INET", "127.0.0.1", 8080)

        def getClientAddress(self) -> Any:
            return ("INET", "127.0.0.1", 5555)

        def getRequestHostname(self) -> bytes:
            return b"example.com"

        def isSecure(self) -> bool:
            return False

    environ = environ_for(Fake())
    assert environ["CONTENT_TYPE"] == "text/plain" and "HTTP_CONTENT_TYPE" not in environ
    assert environ["HTTP_X_THING"] == "1,2" and environ["SERVER_PORT"] == "8080"
    assert environ["PATH_INFO"] == "/x" and environ["SCRIPT_NAME"] == ""
    assert environ["QUERY_STRING"] == "a=1" and environ["SERVER_NAME"] == "example.com"


FLASK_APP = """
import os
import flask

app = flask.Flask(__name__)


@app.get("/")
def index():
    return {"pid": os.getpid(), "answer": 42}
"""


@pytest.mark.e2e
def test_a_flask_app_served_by_forkd_start_from_a_wsgi_tap(tmp_path: Any) -> None:
    import urllib.request

    from forkd.testing import RunningForkd, free_port, make_tap, run_forkd

    (tmp_path / "flaskapp.py").write_text(FLASK_APP)
    port = free_port()
    tap = make_tap(
        tmp_path / "wsgi.tap",
        "wsgi",
        *("--app", "flaskapp:app", "--port", str(port), "--pythonpath", str(tmp_path)),
    )
    with RunningForkd(tap, workers=2) as forkd:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            body = json.loads(response.read())
        assert body["answer"] == 42 and body["pid"] in forkd.worker_pids()
    # an application that no longer imports fails the start with its own error
    (tmp_path / "flaskapp.py").write_text("raise ImportError('the database driver is gone')\n")
    failed = run_forkd("start", tap, "-n", "-w", "1", timeout=60)
    assert failed.returncode == 1 and "the database driver is gone" in failed.stderr


def test_mktap_wsgi_refuses_an_app_that_does_not_resolve(tmp_path: Any) -> None:
    from forkd import taps
    from forkd.usage import UsageError

    module = taps.load("wsgi")
    config = taps.make_options(module, "wsgi")
    with pytest.raises(UsageError, match="--app nosuchmodule:app: ModuleNotFoundError"):
        config.parseOptions(["--app", "nosuchmodule:app", "--pythonpath", str(tmp_path)])
    with pytest.raises(UsageError, match="MODULE:ATTRIBUTE"):
        taps.make_options(module, "wsgi").parseOptions(["--app", "justamodule"])


def counting_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Reads wsgi.input in 64 KiB pieces to EOF and says how much and how many pieces."""
    total = pieces = 0
    while chunk := environ["wsgi.input"].read(65536):
        total += len(chunk)
        pieces += 1
    body = b"%d %d" % (total, pieces)
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def test_an_upload_of_several_mib_is_streamed_to_the_application() -> None:
    site = server.Site(WSGIResource(counting_app, threads=1))
    site.maxBodySize = 16 << 20
    with serving(site) as served:
        size = 6 << 20
        with connect_socket(served.port) as sock:
            sock.sendall(b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // 65536):
                sock.sendall(b"u" * 65536)
            response = ResponseReader(sock).read()
        assert response.status == 200
        total, pieces = response.body.split()
        assert int(total) == size and int(pieces) > 1


def test_chunked_and_empty_bodies_end_wsgi_input() -> None:
    with serving(server.Site(WSGIResource(counting_app))) as served:
        chunked = request(
            served.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        assert chunked.body.split()[0] == b"5"
        empty = request(served.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert empty.body == b"0 0"


def test_a_client_that_leaves_mid_body_frees_the_thread() -> None:
    """The one thread is blocked in read(); the client goes: the read fails, the thread is
    free for the next request."""
    with serving(server.Site(WSGIResource(counting_app, threads=1))) as served:
        with connect_socket(served.port) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nab")
        assert (
            request(served.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok").body
            == b"2 1"
        )


@pytest.mark.e2e
def test_forkd_serve_module_app_as_gunicorn_does_with_forkctl_reload(tmp_path: Any) -> None:
    """`forkd serve flaskapp:app --bind ...`: the tap is written beside, forkctl works on
    it, TERM stops it."""
    from forkd.testing import forkctl, forkd_env, free_port, wait_for

    (tmp_path / "flaskapp.py").write_text(FLASK_APP)
    port = free_port()
    env = forkd_env()
    env["WEB_CONCURRENCY"] = "2"
    with forkd_serve(tmp_path, "flaskapp:app", "--bind", f"127.0.0.1:{port}", env=env):
        served = wait_for(lambda: json_from(port), 30, message="forkd serve to answer")
        assert served["answer"] == 42
        assert (tmp_path / "flaskapp.tap").exists()
        ctl = str(tmp_path / "flaskapp.ctl")
        status = forkctl(ctl, "status", "--json")
        assert len(json.loads(status.stdout)["workers"]) == 2, status.stderr
        reloaded = forkctl(ctl, "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert json_from(port)["answer"] == 42


PRELOADED_APP = """
import os

with open(os.path.join(os.path.dirname(__file__), "imports"), "a") as out:
    out.write("%d\\n" % os.getpid())


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d %s" % (os.getpid(), ANSWER)]


ANSWER = b"first"
"""


@pytest.mark.e2e
@pytest.mark.parametrize("preload", [True, False])
def test_the_app_is_imported_once_in_the_master_unless_no_preload(
    tmp_path: Any, preload: bool
) -> None:
    """As gunicorn's --preload: workers fork with the application already imported (they
    share its memory); a reload still serves the new code (the master re-executes)."""
    import urllib.request

    from forkd.testing import RunningForkd, forkctl, free_port, make_tap, wait_for

    (tmp_path / "preloaded.py").write_text(PRELOADED_APP)
    port = free_port()
    tap = make_tap(
        tmp_path / "preloaded.tap",
        "wsgi",
        *("--app", "preloaded:app", "--port", str(port), "--pythonpath", str(tmp_path)),
        *([] if preload else ["--no-preload"]),
    )
    (tmp_path / "imports").unlink()  # mktap imported it once, to check it
    with RunningForkd(tap, workers=2) as forkd:
        workers = forkd.wait_workers(2)
        imports = {int(pid) for pid in (tmp_path / "imports").read_text().split()}
        assert imports == ({forkd.pid} if preload else workers)

        def answer() -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                return bytes(response.read())

        pid, _, said = answer().partition(b" ")
        assert int(pid) in workers and said == b"first"
        (tmp_path / "preloaded.py").write_text(PRELOADED_APP.replace('b"first"', 'b"second"'))
        reloaded = forkctl(str(tmp_path / "preloaded.ctl"), "reload")
        assert reloaded.returncode == 0, reloaded.stderr + forkd.log()[-3000:]
        forkd.wait_workers(2, exclude=workers, timeout=30)
        wait_for(lambda: answer().endswith(b" second"), message="the new code after reload")


def test_flask_send_file_goes_by_sendfile(tmp_path: Any, monkeypatch: Any) -> None:
    """Werkzeug wraps the file in environ["wsgi.file_wrapper"]: forkd sends it zero-copy."""
    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "blob.bin").write_bytes(data)
    app = flask.Flask("files")

    @app.get("/blob")
    def blob() -> Any:
        return flask.send_file(str(tmp_path / "blob.bin"))

    sent = count_sendfile(monkeypatch)
    with serving(server.Site(WSGIResource(app))) as site:
        response = get(site.port, b"/blob")
        head = request(site.port, b"HEAD /blob HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
    assert response.status == 200 and response.body == data
    assert response.headers[b"content-length"] == b"%d" % len(data)
    assert sent[0] == len(data), "sent with sendfile, not read in 8 KiB pieces"
    assert head.status == 200 and head.body == b""


@pytest.mark.parametrize("how", ["read", "readline", "read-sized"])
def test_reading_more_than_the_input_buffer_at_once_does_not_stall(how: str) -> None:
    """wsgi.input pauses the client beyond its buffer; a read() of the whole body (or a
    readline of one long line) must still get all of it, not wait for ever."""
    size = 1 << 20  # four times BodyInput's buffer

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"]
        if how == "read":
            data = body.read()
        elif how == "readline":
            data = body.readline()
        else:
            data = body.read(size)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(data)]

    with serving(server.Site(WSGIResource(app))) as site:
        response = request(
            site.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + b"y" * size,
        )
    assert response.status == 200 and response.body == b"%d" % size
