"""The asgi tap: an ASGI 3 application (FastAPI, Starlette, ...) served by forkd's workers.

    mktap asgi --app myproject.main:app --port 8000
    forkd start asgi.tap -w 4

The same options as the wsgi tap (--threads aside); see workers.hosting.
"""

from __future__ import annotations

from typing import Any

from forkd.web.server import Site
from workers import wsgi

usage_message = """Serve an ASGI application (FastAPI, Starlette, Quart, ...) over HTTP/1.1.

--app names it as uvicorn does: MODULE:ATTRIBUTE (myproject.main:app) or MODULE:FACTORY()
for an application factory. It runs on each worker's event loop, one task per request;
its lifespan startup runs in each worker before it serves (a failure fails the start) and
its shutdown when the worker drains. HTTP only for now: WebSocket is not served.
"""

Options = wsgi.Options


def getPorts(app: Any, config: Any) -> list[tuple[Any, Site]]:
    return wsgi.getPorts(app, config, interface="asgi")
