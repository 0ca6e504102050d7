"""A Flask JSON API and a plain PEP 3333 application (tests/apps/wsgiapps.py), behind
wsgiref's validator, served by a real `forkd start` from a wsgi tap.

One server for the module. Each test must leave the server's log clean (tests/apps/
serverlog.py): a validator AssertionError raised where the client sees only a 500, or only
on the server, fails the test that caused it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

import h11
import pytest
import urllib3

from forkd import tapfile
from forkd.testing import REPO_ROOT, RunningForkd, free_port, make_tap
from tests.apps import framing, wsgiapps
from tests.apps.framing import CHUNKED, LENGTH, NONE, Case
from tests.apps.serverlog import ServerLog, problems
from tests.h11client import H11Client

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("wsgi_apps")]

BODY_LIMIT = 16 << 20  # what the tap allows (forkd.web's default is nginx's 1 MiB)
UPLOAD_SIZE = 6 << 20
STREAM_BODY = b"".join(b"line %d\n" % n for n in range(100))
JSON = (("Content-Type", "application/json"),)


class Served:
    def __init__(self, port: int, forkd: RunningForkd) -> None:
        self.port = port
        self.forkd = forkd
        self.log = ServerLog(forkd, wsgiapps.FAILING_ON_PURPOSE)
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(total=30), retries=False)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any) -> Iterator[Served]:
    """`mktap wsgi` for the validated application, its body limit raised in the tap (as
    `forkctl shell` would: `forkd serve` has no option for it), one worker of 4 threads."""
    directory = tmp_path_factory.mktemp("wsgiapps")
    port = free_port()
    tap = make_tap(
        directory / "wsgiapps.tap",
        "wsgi",
        *("--app", "tests.apps.wsgiapps:application", "--port", str(port)),
        *("--threads", "4", "--pythonpath", REPO_ROOT),
    )
    application = tapfile.load(tap)
    application.ports[0].factory.maxBodySize = BODY_LIMIT
    application.save()
    with RunningForkd(tap, workers=1) as forkd:
        served = Served(port, forkd)
        yield served
    assert forkd.returncode == 0, forkd.log()
    served.log.check()  # what the last test left, and what stopping logged


@pytest.fixture(autouse=True)
def clean_log(served: Served) -> Iterator[None]:
    served.log.check()  # what the server logged since the last look (its start, or a test)
    yield
    served.log.check()


def test_get_json(served: Served) -> None:
    with H11Client(served.port) as client:
        response = client.request("GET", "/hello")
    assert response.status == 200 and response.header("content-type") == b"application/json"
    body = json.loads(response.body)
    assert body["hello"] == "world" and body["pid"] in served.forkd.worker_pids()


def test_post_json(served: Served) -> None:
    payload = json.dumps({"items": [1, 2, 3], "name": "café"}).encode()
    with H11Client(served.port) as client:
        response = client.request("POST", "/echo", JSON, payload)
    assert response.status == 200
    assert json.loads(response.body) == {
        "got": {"items": [1, 2, 3], "name": "café"},
        "length": len(payload),
    }


def test_a_multipart_upload_of_several_mib_arrives_whole(served: Served) -> None:
    data = random.Random(3333).randbytes(UPLOAD_SIZE)
    response = served.http.request(
        "POST", served.url("/upload"), fields={"file": ("blob.bin", data)}
    )
    assert response.status == 200, response.data[:500]
    assert response.json() == {
        "filename": "blob.bin",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": UPLOAD_SIZE,
        "reads": -(-UPLOAD_SIZE // wsgiapps.READ_SIZE),
    }


def test_a_chunked_upload_is_streamed_to_the_application(served: Served) -> None:
    """No Content-Length: the body ends with its last chunk, read piece by piece."""
    pieces = [random.Random(n).randbytes(256 * 1024) for n in range(UPLOAD_SIZE // (256 << 10))]
    response = served.http.request(
        "PUT", served.url("/raw"), body=iter(pieces), chunked=True, headers={"X-Kind": "raw"}
    )
    assert response.status == 200, response.data[:500]
    body = response.json()
    assert body["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert body["size"] == UPLOAD_SIZE and body["reads"] > 1


def test_an_upload_over_the_limit_is_refused(served: Served) -> None:
    with H11Client(served.port) as client:
        client.sock.sendall(
            b"PUT /raw HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT + 1)
        )
        response = client.receive_head("PUT")
    assert response.status == 413


def test_an_upload_the_application_refuses_unread_still_gets_its_answer(served: Served) -> None:
    """Flask answers a POST to a GET route with 405 without reading the body; the client
    is still sending it. forkd must not reset the connection under that answer."""
    with H11Client(served.port) as client:
        response = client.request("POST", "/hello", body=b"x" * UPLOAD_SIZE)
        assert response.status == 405
        assert client.closed_by_server(), "the rest of the body is not read as a request"


def test_an_error_is_a_500_without_a_traceback_and_the_connection_goes_on(
    served: Served,
) -> None:
    with H11Client(served.port) as client:
        flask_error = client.request("GET", "/boom")  # Flask's own 500 page
        forkd_error = client.request("GET", "/plain/raise")  # out of the application
        after = client.request("GET", "/hello")
    for error in (flask_error, forkd_error):
        assert error.status == 500, error
        assert b"Traceback" not in error.body and b"hunter2" not in error.body, error
    assert forkd_error.body == b"500 Internal Server Error\n"
    assert after.status == 200 and after.keep_alive
    logged = served.log.new()
    assert "the secret database password is hunter2" in logged, "Flask logged its error"
    assert "WSGI application failed on /plain/raise" in logged
    assert "the secret API key is hunter2" in logged


def test_a_generator_response_is_streamed_in_chunks(served: Served) -> None:
    with H11Client(served.port) as client:
        response = client.request("GET", "/stream")
    assert response.status == 200 and response.chunked and response.body == STREAM_BODY
    assert response.chunks > 1


def test_a_streamed_response_is_sent_as_the_generator_yields(served: Served) -> None:
    """The generator holds its second part until the client, having read the first,
    asks for it on another connection: a buffered response would never arrive."""
    with H11Client(served.port) as held, H11Client(served.port) as other:
        held.send("GET", "/stream/held")
        response = held.receive_head("GET")
        assert held.receive_data(response) == b"first part\n"
        assert other.request("GET", "/stream/release").status == 200
        while held.receive_data(response):
            pass
    assert response.body == b"first part\nreleased\n"


def test_write_callable_then_iterable(served: Served) -> None:
    with H11Client(served.port) as client:
        response = client.request("GET", "/plain/write")
    assert response.status == 200 and response.chunked
    assert response.body == b"written by write(), twice; then returned"


def test_start_response_with_exc_info_before_the_head_replaces_it(served: Served) -> None:
    with H11Client(served.port) as client:
        response = client.request("GET", "/plain/exc_info")
        after = client.request("GET", "/plain/sized")
    assert response.status == 500 and response.body == b"recovered from the error\n"
    assert response.header("x-doomed") is None, "the first start_response's headers are gone"
    assert after.status == 200 and after.keep_alive


def test_an_error_after_the_head_cuts_the_connection(served: Served) -> None:
    """exc_info once the head is out re-raises (PEP 3333): the client must not be able
    to take the half body for a whole one."""
    with H11Client(served.port) as client:
        client.send("GET", "/plain/late-error")
        response = client.receive_head("GET")
        assert response.status == 200 and response.chunked
        with pytest.raises((h11.RemoteProtocolError, ConnectionResetError)):
            while client.receive_data(response):
                pass
    assert response.body in (b"", b"half of a body")
    logged = served.log.new()
    assert "WSGI application failed on /plain/late-error" in logged
    assert "the second half is gone" in logged


def test_file_wrapper_sends_the_file(served: Served) -> None:
    with open(wsgiapps.__file__, "rb") as source:
        expected = source.read()
    with H11Client(served.port) as client:
        response = client.request("GET", "/plain/file")
        head = client.request("HEAD", "/plain/file")
    assert response.status == 200 and response.body == expected
    assert response.content_length == len(expected)
    assert head.content_length == len(expected) and head.body == b""


def test_head_has_the_headers_of_get_and_no_body(served: Served) -> None:
    framing.head_matches_get(
        served.port, ["/hello", "/stream", "/plain/sized", "/plain/unsized", "/plain/write"]
    )


def test_a_validator_failure_fails_the_test_that_caused_it(served: Served) -> None:
    """/plain/invalid yields a str: the validator's AssertionError is a 500 for the client
    and a logged problem, which `clean_log` would fail this test on (it is read here
    first, so that this test, which causes it on purpose, passes)."""
    with H11Client(served.port) as client:
        response = client.request("GET", "/plain/invalid")
    assert response.status == 500
    found = problems(served.log.new(), wsgiapps.FAILING_ON_PURPOSE)
    assert any("AssertionError" in line for line in found), found


# -- framing, read by h11 ------------------------------------------------------------------
CASES = [
    Case("GET", "/hello", 200, LENGTH),
    framing.head_of(Case("GET", "/hello", 200, LENGTH)),
    Case("GET", "/stream", 200, CHUNKED, STREAM_BODY),
    framing.head_of(Case("GET", "/stream", 200, CHUNKED)),
    Case("GET", "/nothing", 204, NONE, b""),
    Case("GET", "/tagged", 200, LENGTH, b'{"version":1}\n'),
    Case("GET", "/tagged", 304, NONE, b"", (("If-None-Match", '"v1"'),)),
    Case("POST", "/echo", 200, LENGTH, None, JSON, b'{"a": 1}'),
    Case("PUT", "/raw", 200, LENGTH, None, (("Transfer-Encoding", "chunked"),), b"z" * 100_000),
    Case("GET", "/plain/write", 200, CHUNKED),
    Case("GET", "/plain/sized", 200, LENGTH, b"a body of known length\n"),
    framing.head_of(Case("GET", "/plain/unsized", 200, CHUNKED)),
    Case("GET", "/plain/unsized", 200, CHUNKED, b"piece one, piece two"),
    Case("GET", "/missing", 404, LENGTH),
    Case("DELETE", "/hello", 405, LENGTH),
    Case("GET", "/boom", 500, LENGTH),
    Case("GET", "/hello", 200, LENGTH),
]


def test_expect_100_continue_is_answered_before_the_response(served: Served) -> None:
    expect = (*JSON, ("Expect", "100-continue"))
    with H11Client(served.port) as client:
        response = client.request("POST", "/echo", expect, b'{"a": 2}')
        after = client.request("GET", "/hello")
    assert response.informational == [100] and response.status == 200
    assert json.loads(response.body)["got"] == {"a": 2} and after.status == 200


def test_responses_one_by_one_on_one_keep_alive_connection(served: Served) -> None:
    framing.one_by_one(served.port, CASES)


def test_pipelined_responses_come_back_in_order(served: Served) -> None:
    framing.pipelined(served.port, CASES)


def test_more_pipelining_connections_than_threads_keep_their_answers(served: Served) -> None:
    """Six connections each pipeline three requests to four threads: every answer comes
    back on its own connection, in order."""
    clients = [H11Client(served.port) for _ in range(6)]
    try:
        for number, client in enumerate(clients):
            body = json.dumps({"client": number, "n": 0}).encode()
            client.send_pipelined(
                [("POST", "/echo", JSON, body.replace(b'"n": 0', b'"n": %d' % n)) for n in range(3)]
            )
        for number, client in enumerate(clients):
            answers = [json.loads(r.body)["got"] for r in client.receive_pipelined()]
            assert answers == [{"client": number, "n": n} for n in range(3)]
    finally:
        for client in clients:
            client.close()
