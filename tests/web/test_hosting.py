"""workers.hosting: naming an application, gunicorn's --bind forms, and binds of every kind
served by a real `forkd serve`."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from forkd.ports import InheritedPort, TCPPort, UNIXPort
from forkd.testing import run_forkd, wait_for
from tests.webserving import forkd_serve, json_from
from workers.hosting import interface_of, load_application, parse_bind

APP = """
import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"pid": %d, "host": "%s"}' % (os.getpid(), environ["SERVER_NAME"].encode())]


def make_app():
    return app


class Holder:
    inner = staticmethod(app)
"""


@pytest.fixture
def app_dir(tmp_path: Any) -> Any:
    (tmp_path / "hostedapp.py").write_text(APP)
    return tmp_path


def test_every_application_spec_gunicorn_takes(app_dir: Any) -> None:
    assert load_application("hostedapp:app", str(app_dir)).__name__ == "app"
    assert load_application("hostedapp:make_app()", str(app_dir)).__name__ == "app"
    assert load_application("hostedapp:Holder.inner", str(app_dir)).__name__ == "app"
    with pytest.raises(ValueError, match="MODULE:ATTRIBUTE"):
        load_application("hostedapp", str(app_dir))
    with pytest.raises(AttributeError):
        load_application("hostedapp:missing", str(app_dir))


def test_interface_auto_tells_a_coroutine_from_a_wsgi_callable() -> None:
    async def asgi(scope: Any, receive: Any, send: Any) -> None: ...

    class Callable:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...

    assert interface_of(asgi) == "asgi" and interface_of(Callable()) == "asgi"
    assert interface_of(lambda environ, start_response: []) == "wsgi"


@pytest.mark.parametrize(
    ("bind", "kind", "where"),
    [
        ("127.0.0.1:8000", TCPPort, "tcp:127.0.0.1:8000"),
        ("[::1]:8001", TCPPort, "tcp:[::1]:8001"),
        (":8002", TCPPort, "tcp:8002"),
        ("unix:/tmp/x.sock", UNIXPort, "unix:/tmp/x.sock"),
        ("fd://3", InheritedPort, "fd:3"),
    ],
)
def test_bind_forms(bind: str, kind: type, where: str) -> None:
    port = parse_bind(bind, None)
    assert isinstance(port, kind) and port.key == where


@pytest.mark.parametrize("bind", ["8000", "host:", "host:99999", "fd://x", "fd://"])
def test_bad_binds_say_what_is_wanted(bind: str) -> None:
    with pytest.raises(ValueError, match="bad --bind"):
        parse_bind(bind, None)


@pytest.mark.e2e
def test_fd_bind_serves_a_socket_the_parent_bound(app_dir: Any) -> None:
    """`--bind fd://N` as gunicorn: a supervisor bound the socket and passed it down."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        with forkd_serve(app_dir, "hostedapp:app", "--bind", f"fd://{fd}", pass_fds=(fd,)):
            answer = wait_for(lambda: json_from(port), 30, message="forkd serve on fd://")
            assert answer["host"] == "127.0.0.1"


@pytest.mark.e2e
def test_an_fd_bind_that_is_not_a_listening_socket_fails_the_start(app_dir: Any) -> None:
    done = run_forkd("serve", "hostedapp:app", "--bind", "fd://0", cwd=app_dir, timeout=60)
    assert done.returncode != 0
    assert "fd://0" in done.stderr and "Traceback" not in done.stderr


BODY_APP = """
def app(environ, start_response):
    size = len(environ["wsgi.input"].read())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % size]
"""


@pytest.mark.e2e
@pytest.mark.parametrize(("limit", "status"), [((), 200), (("--limit-request-body", "1000"), 413)])
def test_forkd_serve_takes_bodies_of_any_size_unless_limited(
    tmp_path: Any, limit: tuple[str, ...], status: int
) -> None:
    """As gunicorn and uvicorn: no body limit unless asked (the body streams to the app)."""
    import urllib3

    from forkd.testing import RunningForkd, free_port

    (tmp_path / "bodyapp.py").write_text(BODY_APP)
    port = free_port()
    with RunningForkd.serving(tmp_path, "bodyapp:app", "--bind", f"127.0.0.1:{port}", *limit):
        response = urllib3.request(
            "POST", f"http://127.0.0.1:{port}/", body=b"x" * (3 << 20), retries=False
        )
    assert response.status == status
    if status == 200:
        assert response.data == b"%d" % (3 << 20)
