"""forkd.web.asgi: a real FastAPI application, and raw ASGI apps, on forkd.web."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fastapi
import pytest
from fastapi.responses import StreamingResponse

from forkd.protocol import stats
from forkd.testing import wait_for
from forkd.web import server
from forkd.web.asgi import ASGIResource
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


def fastapi_app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @app.post("/echo")
    async def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return {"got": payload}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> Any:
            for n in range(3):
                yield b"part %d\n" % n

        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the application broke")

    return app


@pytest.fixture
def port() -> Iterator[int]:
    with serving(server.Site(ASGIResource(fastapi_app()))) as site:
        yield site.port


def test_fastapi_path_and_query(port: int) -> None:
    response = get(port, b"/items/42?q=hi")
    assert response.status == 200
    assert json.loads(response.body) == {"item_id": 42, "q": "hi"}


def test_fastapi_post_json(port: int) -> None:
    payload = json.dumps({"a": 1}).encode()
    response = request(
        port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload),
    )
    assert response.status == 200 and json.loads(response.body) == {"got": {"a": 1}}


def test_fastapi_streaming_response(port: int) -> None:
    response = get(port, b"/stream")
    assert response.status == 200 and response.body == b"part 0\npart 1\npart 2\n"


def test_fastapi_errors_are_500_and_404_and_the_worker_keeps_serving(port: int) -> None:
    assert get(port, b"/boom").status == 500
    assert get(port, b"/nowhere").status == 404
    assert get(port, b"/items/1").status == 200


async def counting(scope: Any, receive: Any, send: Any) -> None:
    """A raw ASGI app: reads the body message by message, answers with the count."""
    assert scope["type"] == "http" and scope["asgi"]["version"] == "3.0"
    total = messages = 0
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        total += len(message["body"])
        messages += 1
        if not message["more_body"]:
            break
    body = b"%d %d %s" % (total, messages, scope["path"].encode())
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-n", b"1")]})
    await send({"type": "http.response.body", "body": body})


def test_a_body_reaches_the_application_as_it_arrives() -> None:
    with serving(server.Site(ASGIResource(counting))) as served:
        with connect_socket(served.port) as sock:
            sock.sendall(b"POST /a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
            for _ in range(20):
                sock.sendall(b"z" * 10000)
            response = ResponseReader(sock).read()
        assert response.status == 201 and response.headers[b"x-n"] == b"1"
        total, messages, path = response.body.split(b" ", 2)
        assert int(total) == 200000 and int(messages) > 2 and path == b"/a b"
        empty = request(served.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert empty.status == 201 and empty.body.startswith(b"0 1 ")


CHUNK, CHUNKS = 256 * 1024, 64  # 16 MiB in all


class Streaming:
    """An ASGI app that streams CHUNKS chunks as fast as send() lets it, counting them."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(CHUNKS):
            await send({"type": "http.response.body", "body": b"x" * CHUNK, "more_body": True})
            self.sent += 1
        await send({"type": "http.response.body", "body": b""})


def test_a_client_that_does_not_read_holds_the_application_back() -> None:
    """send() waits on the channel's write buffer: a slow reader costs bounded memory,
    and reading on gets every byte."""
    import socket

    app = Streaming()
    site = server.Site(ASGIResource(app))
    with serving(site) as served:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", served.port))
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

            def held_back() -> bool:
                channels = [p for p in list(stats.open) if getattr(p, "factory", None) is site]
                return any(channel._producer is not None for channel in channels)

            wait_for(lambda: served.call(held_back), message="send() waiting for the client")
            assert app.sent * CHUNK < 8 * 1024 * 1024, "the application ran ahead"
            response = ResponseReader(sock).read()
        assert response.status == 200 and len(response.body) == CHUNK * CHUNKS
        assert app.sent == CHUNKS


FASTAPI_APP = """
import os
import fastapi

app = fastapi.FastAPI()


@app.get("/")
async def index():
    return {"pid": os.getpid(), "kind": "asgi"}
"""


@pytest.mark.e2e
def test_forkd_serve_finds_an_asgi_app_and_serves_it_like_uvicorn(tmp_path: Any) -> None:
    from forkd import tapfile
    from forkd.testing import free_port, wait_for

    (tmp_path / "fastapp.py").write_text(FASTAPI_APP)
    port = free_port()
    with forkd_serve(tmp_path, "fastapp:app", "--bind", f"127.0.0.1:{port}", "-w", "2"):
        served = wait_for(lambda: json_from(port), 30, message="forkd serve to answer")
        assert served["kind"] == "asgi"
        [port_object] = tapfile.load(str(tmp_path / "fastapp.tap")).ports
        assert port_object.factory.interface == "asgi", "auto found a coroutine callable"


LIFESPAN_APP = """
import contextlib
import os
import fastapi


@contextlib.asynccontextmanager
async def lifespan(app):
    if os.path.exists(os.path.join(os.path.dirname(__file__), "broken")):
        raise RuntimeError("cannot reach the database")
    yield {"greeting": "set at startup in pid %d" % os.getpid()}
    with open(os.path.join(os.path.dirname(__file__), "shutdowns"), "a") as out:
        out.write("%d\\n" % os.getpid())


app = fastapi.FastAPI(lifespan=lifespan)


@app.get("/")
async def index(request: fastapi.Request):
    return {"greeting": request.state.greeting, "pid": os.getpid()}
"""


@pytest.mark.e2e
def test_lifespan_runs_in_each_worker_and_its_failure_fails_the_start(tmp_path: Any) -> None:
    """Startup before serving, its state in every request, shutdown when the worker
    drains; a startup that fails is a boot failure, not a respawn loop."""
    import urllib.request

    from forkd.testing import RunningForkd, free_port, make_tap, run_forkd

    (tmp_path / "lifeapp.py").write_text(LIFESPAN_APP)
    port = free_port()
    tap = make_tap(
        tmp_path / "asgi.tap",
        "asgi",
        *("--app", "lifeapp:app", "--port", str(port), "--pythonpath", str(tmp_path)),
    )
    with RunningForkd(tap, workers=2) as forkd:
        workers = forkd.wait_workers(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            body = json.loads(response.read())
        assert body["greeting"] == f"set at startup in pid {body['pid']}"
        assert body["pid"] in workers
    shutdowns = (tmp_path / "shutdowns").read_text().split()
    assert sorted(int(pid) for pid in shutdowns) == sorted(workers), "each drained worker"
    (tmp_path / "broken").write_text("")
    failed = run_forkd("start", tap, "-n", "-w", "1", timeout=60)
    assert failed.returncode == 1 and "cannot reach the database" in failed.stderr


def test_a_fastapi_file_response_goes_by_pathsend_and_sendfile(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """Starlette's FileResponse sends `http.response.pathsend` when the server offers the
    extension: forkd sends the file zero-copy from the loop, not read in chunks."""
    from fastapi.responses import FileResponse

    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "blob.bin").write_bytes(data)
    app = fastapi.FastAPI()

    @app.api_route("/blob", methods=["GET", "HEAD"])
    async def blob() -> FileResponse:
        return FileResponse(tmp_path / "blob.bin")

    sent = count_sendfile(monkeypatch)
    with serving(server.Site(ASGIResource(app))) as site:
        response = get(site.port, b"/blob")
        head = request(site.port, b"HEAD /blob HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
    assert response.status == 200 and response.body == data
    assert response.headers[b"content-length"] == b"%d" % len(data)
    assert sent and sent[0] == len(data), "sent with sendfile"
    assert head.status == 200 and head.body == b""


def test_an_app_that_returns_on_the_lifespan_scope_is_served_without_lifespan() -> None:
    """uvicorn's --lifespan auto: an app that neither answers nor raises must not hang
    the worker's boot."""
    import asyncio

    from forkd.web.asgi import Lifespan

    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return

    async def boot() -> None:
        lifespan = Lifespan(http_only, {})
        await asyncio.wait_for(lifespan.startup(), 5)
        await asyncio.wait_for(lifespan.shutdown(), 5)

    asyncio.run(boot())
