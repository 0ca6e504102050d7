"""What a real forkd serving an application logged, read test by test.

An application can fail where the client cannot see it: wsgiref's validator raises its
AssertionError inside the application, an iterator never closed is only reported from
`__del__` ("Exception ignored in ..."), a response shorter than its Content-Length is
closed with an ERROR line. So the tests of tests/apps/ read the server's log after each
test and fail on any such line, except the application failures a test causes on purpose
(the paths in `expected`).

Lines come as forkd.supervisor.logs writes them:

    2024-05-01 12:00:00,123 [4242] [worker 1] ERROR forkd.web.wsgi: WSGI application failed on /x
"""

from __future__ import annotations

import re

from forkd.testing import RunningForkd

ALWAYS = re.compile(r"AssertionError|Exception ignored")
RECORD = re.compile(r"\] (ERROR|CRITICAL) (forkd[\w.]*): (.*)")
FAILED_ON = re.compile(r"(?:WSGI|ASGI) application failed on (\S+)")


def problems(text: str, expected: frozenset[str] = frozenset()) -> list[str]:
    """The lines of `text` that say something went wrong that no test meant.

    forkd.web.wsgi's other ERROR lines are what the application wrote to wsgi.errors
    (Flask's report of an error it answered with its own 500): the application's
    business. Every other ERROR from forkd, and every AssertionError, is a finding."""
    found = []
    for line in text.splitlines():
        if ALWAYS.search(line):
            found.append(line)
            continue
        record = RECORD.search(line)
        if record is None:
            continue
        logger, message = record.group(2), record.group(3)
        failed = FAILED_ON.match(message)
        if failed is not None:
            if failed.group(1) not in expected:
                found.append(line)
        elif logger != "forkd.web.wsgi":
            found.append(line)
    return found


class ServerLog:
    """The part of a RunningForkd's log that is new since the last look."""

    def __init__(self, forkd: RunningForkd, expected: frozenset[str] = frozenset()) -> None:
        self.forkd = forkd
        self.expected = expected
        self.seen = 0

    def new(self) -> str:
        """What the server logged since the last call (or since it started)."""
        text = self.forkd.log()
        fresh, self.seen = text[self.seen :], len(text)
        return fresh

    def check(self) -> None:
        """AssertionError naming every unexpected problem logged since the last look."""
        found = problems(self.new(), self.expected)
        assert not found, "the server logged:\n" + "\n".join(found)
