"""The wsgi tap: a WSGI application (Flask, Django, ...) served by forkd's workers.

    mktap wsgi --app myproject.wsgi:application --port 8000
    forkd start wsgi.tap -w 4

The tap holds the application's name, not the application: each worker imports it when it
boots (so an import error fails `forkd start` with the application's own message instead
of a respawn loop), and a reload imports the new code.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from forkd import usage
from forkd.app import Application
from forkd.ports import TCPPort, UNIXPort
from forkd.web.resource import Resource
from forkd.web.server import Site
from forkd.web.wsgi import WSGIResource

usage_message = """Serve a WSGI application (PEP 3333: Flask, Django, Falcon, ...) over HTTP/1.1.

--app names it as gunicorn does: MODULE:ATTRIBUTE (myproject.wsgi:application) or
MODULE:FACTORY() for an application factory. --pythonpath (default: the directory mktap
ran in) is where MODULE is imported from. The application runs in --threads threads per
worker; the sockets stay with the event loop.
"""


def load_application(spec: str, pythonpath: str = "") -> Any:
    """The callable `spec` names ("module:attr", "module:factory()", "module:a.b")."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--app wants MODULE:ATTRIBUTE, not {spec!r}")
    if pythonpath and pythonpath not in sys.path:
        sys.path.insert(0, pythonpath)
    module = importlib.import_module(module_name)
    call = attribute.endswith("()")
    target: Any = module
    for part in attribute.removesuffix("()").split("."):
        target = getattr(target, part)
    if call:
        target = target()
    if not callable(target):
        raise TypeError(f"{spec} is a {type(target).__name__}, not a WSGI application")
    return target


class _Booting(Resource):
    """What a WSGISite serves before its worker has imported the application (never, as
    the worker imports it in startFactory, before it serves)."""

    isLeaf = True


class WSGISite(Site):
    """A Site whose WSGIResource is made in each worker from the application's name."""

    def __init__(self, app: str, pythonpath: str, threads: int, logPath: str | None = None):
        super().__init__(_Booting(), logPath)
        self.app = app
        self.pythonpath = pythonpath
        self.threads = threads

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["resource"] = _Booting()  # the application is imported, never pickled
        return state

    def startFactory(self) -> None:
        self.resource = WSGIResource(load_application(self.app, self.pythonpath), self.threads)
        super().startFactory()


class Options(usage.Options):
    optParameters = [
        ["app", "a", None, "The WSGI application, MODULE:ATTRIBUTE."],
        ["port", "p", 8000, "TCP port to listen on.", usage.portCoerce],
        ["interface", "i", "127.0.0.1", "Address to listen on (0.0.0.0: every IPv4 address)."],
        ["threads", "t", 8, "Threads running the application, per worker.", int],
        ["pythonpath", None, None, "Where MODULE is imported from [default: here]."],
        ["access-log", None, None, "Combined-format access log file, or - for stdout."],
    ]

    def postOptions(self) -> None:
        if not self["app"]:
            raise usage.UsageError("--app MODULE:ATTRIBUTE is required")
        if self["threads"] < 1:
            raise usage.UsageError("--threads must be at least 1")
        self["pythonpath"] = os.path.abspath(self["pythonpath"] or os.getcwd())
        try:  # found now, not at the first request: as gunicorn --check-config
            load_application(self["app"], self["pythonpath"])
        except Exception as error:
            raise usage.UsageError(
                f"--app {self['app']}: {type(error).__name__}: {error}"
            ) from None


def parse_bind(text: str, factory: Any) -> Any:
    """A gunicorn `--bind`: HOST:PORT, [IPV6]:PORT, :PORT or unix:PATH."""
    if text.startswith("unix:"):
        return UNIXPort(text[len("unix:") :], factory)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad --bind {text!r}: give HOST:PORT, [::1]:PORT or unix:PATH")
    return TCPPort(int(port), factory, interface=host.strip("[]"))


def serve_application(
    app: str, binds: list[str], threads: int, pythonpath: str, name: str
) -> Application:
    """The Application `forkd serve MODULE:APP --bind ...` runs: one WSGISite on every bind
    (checked to resolve first, as `mktap wsgi` does)."""
    load_application(app, pythonpath)
    site = WSGISite(app, pythonpath, threads)
    application = Application(name)
    for bind in binds:
        application.addPort(parse_bind(bind, site))
    return application


def getPorts(app: Any, config: Any) -> list[tuple[Any, Site]]:
    site = WSGISite(config["app"], config["pythonpath"], config["threads"], config["access-log"])
    return [(TCPPort(config["port"], site, interface=config["interface"]), site)]
