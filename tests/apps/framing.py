"""Framing cases run through tests/h11client.py against each real server of tests/apps/.

A `Case` is one request and what its response must be: status, framing (Content-Length,
chunked, or none at all for 204 and 304) and body. `one_by_one` sends the cases on one
keep-alive connection, each after the last answer; `pipelined` writes them all at once and
reads the answers in order. Both fail on any response h11 cannot read, on a connection the
server closes before the last case, and on a case whose response differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tests.h11client import H11Client, H11Response, Header, RequestSpec

LENGTH, CHUNKED, NONE = "Content-Length", "chunked", "no body framing"


@dataclasses.dataclass(frozen=True)
class Case:
    method: str
    target: str
    status: int
    framing: str  # LENGTH, CHUNKED or NONE
    body: bytes | None = None  # what the body must be; None: anything
    headers: tuple[Header, ...] = ()
    send: bytes = b""  # the request body

    def spec(self) -> RequestSpec:
        return (self.method, self.target, self.headers, self.send)

    def check(self, response: H11Response) -> None:
        shown = f"{self.method} {self.target}: {response}"
        assert response.status == self.status, shown
        framing = LENGTH if response.content_length is not None else NONE
        framing = CHUNKED if response.chunked else framing
        assert framing == self.framing, f"{framing}, not {self.framing}: {shown}"
        if self.method == "HEAD" or self.status in (204, 304):
            assert response.body == b"", shown
        elif framing == CHUNKED:
            assert response.chunks >= 1, shown
        if self.body is not None:
            assert response.body == self.body, shown
        assert response.keep_alive, f"the server will close after {shown}"


def head_of(case: Case) -> Case:
    """The HEAD twin of a GET case: same status and framing, no body (RFC 9110 9.3.2)."""
    return dataclasses.replace(case, method="HEAD", body=b"")


def one_by_one(port: int, cases: Sequence[Case]) -> list[H11Response]:
    """Every case on one connection, each sent once the previous one is answered."""
    with H11Client(port) as client:
        responses = []
        for case in cases:
            response = client.request(*case.spec())
            case.check(response)
            responses.append(response)
        assert client.answered == len(cases)
    return responses


def pipelined(port: int, cases: Sequence[Case]) -> list[H11Response]:
    """Every case in one write on one connection; the answers read in order."""
    with H11Client(port) as client:
        responses = client.pipeline([case.spec() for case in cases])
        for case, response in zip(cases, responses, strict=True):
            case.check(response)
        # still open: one more request on it is answered
        Case("GET", cases[0].target, cases[0].status, cases[0].framing).check(
            client.request("GET", cases[0].target)
        )
    return responses


def head_matches_get(port: int, targets: Sequence[str]) -> None:
    """For each target, HEAD's status and framing are GET's, its Content-Length (if any)
    the length of GET's body (RFC 9110 8.6: never a length GET would not have)."""
    with H11Client(port) as client:
        for target in targets:
            got = client.request("GET", target)
            head = client.request("HEAD", target)
            shown = f"{target}: GET {got}, HEAD {head}"
            assert head.status == got.status and head.body == b"", shown
            assert head.chunked == got.chunked, shown
            if head.content_length is not None:
                assert head.content_length == len(got.body), shown
