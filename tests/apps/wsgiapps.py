"""The WSGI applications tests/apps/test_wsgi_apps.py serves with a real forkd: a Flask JSON
API and a plain PEP 3333 application, both behind one `wsgiref.validate.validator`.

    mktap wsgi --app tests.apps.wsgiapps:application

`application` is the validator around `dispatch`: paths under /plain/ go to `plain`, the
rest to the Flask app. The validator sits between forkd and both, so every environ,
start_response call, write() and iteration forkd does is checked; what it finds is an
AssertionError raised inside the application, which forkd logs ("WSGI application
failed") and answers with a 500 or a cut connection, and the tests fail on either.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import flask

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]

READ_SIZE = 64 * 1024  # what the upload routes ask of the stream at a time
RELEASE_TIMEOUT = 10.0  # a held stream gives up waiting for /stream/release after this

api = flask.Flask("wsgiapps")
released = threading.Event()  # set by /stream/release: one worker, so one process


def digest_of(stream: Any) -> dict[str, Any]:
    """sha256 and size of `stream` read to its end in READ_SIZE pieces, and how many reads
    it took (more than one: the body came as a stream, not one buffer)."""
    sha = hashlib.sha256()
    size = reads = 0
    while chunk := stream.read(READ_SIZE):
        sha.update(chunk)
        size += len(chunk)
        reads += 1
    return {"sha256": sha.hexdigest(), "size": size, "reads": reads}


@api.get("/hello")
def hello() -> Any:
    return {"hello": "world", "pid": os.getpid()}


@api.post("/echo")
def echo() -> Any:
    return {"got": flask.request.get_json(), "length": flask.request.content_length}


@api.post("/upload")
def upload() -> Any:
    """A multipart/form-data file upload: Werkzeug spools the part, the route hashes it."""
    part = flask.request.files["file"]
    return {"filename": part.filename, **digest_of(part.stream)}


@api.put("/raw")
def raw() -> Any:
    """A raw body (Content-Length or chunked), hashed as it is read from wsgi.input."""
    return digest_of(flask.request.stream)


@api.get("/boom")
def boom() -> Any:
    raise RuntimeError("the secret database password is hunter2")


@api.get("/stream")
def stream() -> Any:
    return flask.Response((b"line %d\n" % n for n in range(100)), mimetype="text/plain")


@api.get("/stream/held")
def held() -> Any:
    """The first part at once, the rest only after /stream/release: a client that reads the
    first part before it asks for the release shows the response is streamed."""
    released.clear()

    def parts() -> Iterator[bytes]:
        yield b"first part\n"
        yield b"released\n" if released.wait(RELEASE_TIMEOUT) else b"never released\n"

    return flask.Response(parts(), mimetype="text/plain")


@api.get("/stream/release")
def release() -> Any:
    released.set()
    return {"released": True}


@api.get("/nothing")
def nothing() -> Any:
    response = flask.Response(status=204)
    del response.headers["Content-Type"]  # a 204 has no content to type (the validator agrees)
    return response


@api.get("/tagged")
def tagged() -> Any:
    """An ETag'd JSON document: 304 Not Modified for a client that has it."""
    response = flask.jsonify({"version": 1})
    response.set_etag("v1")
    return response.make_conditional(flask.request)


# -- the plain PEP 3333 application: what a framework would hide ---------------------------
def plain(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    route = PLAIN_ROUTES.get(environ["PATH_INFO"].removeprefix("/plain"))
    if route is None:
        body = b"no such plain route\n"
        start_response(
            "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    return route(environ, start_response)


def written(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The body through the write() callable, then the rest through the iterable."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written by write(), ")
    write(b"twice; ")
    return [b"then returned"]


def recovered(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """start_response again with exc_info before anything is sent: the error page wins."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Doomed", "yes")])
    try:
        raise ValueError("the template failed to render")
    except ValueError:
        body = b"recovered from the error\n"
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            sys.exc_info(),
        )
        return [body]


def late_error(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """An error after the head is out: start_response with exc_info re-raises it (PEP
    3333), the application lets it go, and forkd must cut the connection."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"half of a body")
    try:
        raise LookupError("the second half is gone")
    except LookupError:
        start_response(
            "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
        )
    return [b"never sent"]


def wrapped_file(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """This module's own source through wsgi.file_wrapper."""
    path = os.path.abspath(__file__)
    start_response(
        "200 OK",
        [("Content-Type", "text/x-python"), ("Content-Length", str(os.path.getsize(path)))],
    )
    wrapper: Callable[..., Iterable[bytes]] = environ["wsgi.file_wrapper"]
    return wrapper(open(path, "rb"), 8192)  # noqa: SIM115  # the server closes it


def sized(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The same body for GET and HEAD, with its Content-Length: HEAD's is dropped by forkd."""
    body = b"a body of known length\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def unsized(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A body of unknown length, in pieces, for GET and HEAD alike."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"piece one, ", b"piece two"]


def raises(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """An exception out of the application before start_response: forkd's own 500."""
    raise RuntimeError("the secret API key is hunter2")


def invalid(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A str where PEP 3333 wants bytes: the validator's AssertionError, on purpose."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["not bytes"]  # type: ignore[list-item]


PLAIN_ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "/write": written,
    "/exc_info": recovered,
    "/late-error": late_error,
    "/file": wrapped_file,
    "/sized": sized,
    "/unsized": unsized,
    "/raise": raises,
    "/invalid": invalid,
}

#: the paths whose application errors are on purpose: forkd logs them, nothing else may
FAILING_ON_PURPOSE = frozenset({"/plain/late-error", "/plain/raise"})


class SizedReads:
    """`wsgi.input` as Werkzeug gets it here. wsgiref's validator predates the
    `wsgi.input_terminated` extension (gunicorn's and forkd's): told the stream ends by
    itself, Werkzeug calls read() without a size to get the rest, which the validator's
    PEP 3333 check refuses. This passes read(-1), the same call by io's rules, so every
    read still goes through the validator to forkd."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self.stream.read(-1 if size is None else size)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.stream)


def dispatch(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"].startswith("/plain/"):
        return plain(environ, start_response)
    environ["wsgi.input"] = SizedReads(environ["wsgi.input"])
    wsgi_app: Callable[[Environ, StartResponse], Iterable[bytes]] = api.wsgi_app
    return wsgi_app(environ, start_response)


application = validator(dispatch)
