"""What the wsgi and asgi taps (and `forkd serve`) share: naming an application by
MODULE:APP, the Site that imports it in each worker, and gunicorn's --bind.

The tap holds the application's name, not the application: the master imports it before
forking (preload: the workers share it; with --no-preload each worker imports it as it
boots), so an import error fails `forkd start` with the application's own message instead
of a respawn loop, and a reload (the master re-executes) imports the new code.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Mapping
from typing import Any

from forkd.app import Application
from forkd.ports import InheritedPort, TCPPort, UNIXPort
from forkd.web.asgi import ASGIResource, Lifespan
from forkd.web.resource import Resource
from forkd.web.server import Site
from forkd.web.wsgi import WSGIResource
from workers.site_options import SITE_OPTIONS, site_settings

__all__ = ["SITE_OPTIONS", "HostedSite", "load_application", "serve_application", "site_settings"]

INTERFACES = ("wsgi", "asgi")


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
        raise TypeError(f"{spec} is a {type(target).__name__}, not an application")
    return target


def interface_of(application: Any) -> str:
    """ "asgi" for a coroutine callable (async def, or an object whose __call__ is), else
    "wsgi": what `forkd serve --interface auto` decides, as uvicorn and granian do."""
    call = application if inspect.isfunction(application) else type(application).__call__
    return "asgi" if inspect.iscoroutinefunction(call) else "wsgi"


class _Booting(Resource):
    """What a HostedSite serves before its worker has imported the application (never, as
    the worker imports it in startFactory, before it serves)."""

    isLeaf = True


class HostedSite(Site):
    """A Site whose WSGI or ASGI resource is made in each worker from the app's name."""

    lifespan: Lifespan | None = None  # an ASGI application's, once imported in the worker
    #: import the application in the master before forking (gunicorn's --preload), so the
    #: workers share its memory; off (`--no-preload`) for one that starts threads or opens
    #: connections at import, which would not survive the fork
    preloadApp = True
    #: no limit on request bodies by default, as gunicorn and uvicorn: the body streams to
    #: the application (wsgi.input, receive()), so its size costs no memory here
    maxBodySize = 0
    _preloaded: Any = None
    #: where a proxy mounts the application (WSGI SCRIPT_NAME, ASGI root_path; --root-path)
    rootPath = ""

    def __init__(
        self,
        app: str,
        pythonpath: str,
        interface: str = "wsgi",
        threads: int = 8,
        logPath: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(_Booting(), logPath)
        self.app = app
        self.pythonpath = pythonpath
        self.interface = interface
        self.threads = threads
        for attribute, value in (settings or {}).items():
            setattr(self, attribute, value)  # per site, so it pickles into the tap

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["resource"] = _Booting()  # the application is imported, never pickled
        state.pop("lifespan", None)
        state.pop("_preloaded", None)
        return state

    def preload(self) -> None:
        """In the master, before any worker forks (forkd.supervisor.spawn.preload)."""
        if self.preloadApp:
            self._preloaded = load_application(self.app, self.pythonpath)

    def startFactory(self) -> None:
        application = self._preloaded
        if application is None:
            application = load_application(self.app, self.pythonpath)
        if self.interface == "asgi":
            resource = ASGIResource(application, root_path=self.rootPath)
            self.lifespan = Lifespan(application, resource.state)
            self.resource = resource
        else:
            self.resource = WSGIResource(application, self.threads, root_path=self.rootPath)
        super().startFactory()

    async def whenStarted(self) -> None:
        """In the worker, before it serves: the ASGI lifespan startup (a failure fails the
        boot, so `forkd start` reports it instead of respawning)."""
        if self.lifespan is not None:
            await self.lifespan.startup()

    async def whenStopping(self) -> None:
        if self.lifespan is not None:
            await self.lifespan.shutdown()


def parse_bind(
    text: str, factory: Any, backlog: int | None = None, contextFactory: Any = None
) -> Any:
    """A gunicorn `--bind`: HOST:PORT, [IPV6]:PORT, :PORT, unix:PATH or fd://N; over TLS
    when `contextFactory` is given (as gunicorn's --certfile applies to every bind)."""
    queue: dict[str, Any] = {"backlog": backlog} if backlog else {}
    queue["contextFactory"] = contextFactory
    if text.startswith("unix:"):
        return UNIXPort(text[len("unix:") :], factory, **queue)
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not number.isdigit():
            raise ValueError(f"bad --bind {text!r}: fd:// takes a descriptor number")
        if contextFactory is not None:
            raise ValueError(f"{text}: TLS on an inherited socket is not supported")
        return InheritedPort(int(number), factory)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bad --bind {text!r}: give HOST:PORT, [::1]:PORT, unix:PATH or fd://N")
    return TCPPort(int(port), factory, interface=host.strip("[]"), **queue)


def serve_application(
    app: str,
    binds: list[str],
    threads: int,
    pythonpath: str,
    name: str,
    interface: str = "auto",
    settings: Mapping[str, Any] | None = None,
    backlog: int | None = None,
    contextFactory: Any = None,
) -> Application:
    """The Application `forkd serve MODULE:APP --bind ...` runs: one HostedSite on every
    bind (over TLS with a `contextFactory`), the application resolved first (as the taps
    do) to pick its interface."""
    loaded = load_application(app, pythonpath)
    kind = interface_of(loaded) if interface == "auto" else interface
    site = HostedSite(app, pythonpath, kind, threads, settings=settings)
    application = Application(name)
    for bind in binds:
        application.addPort(parse_bind(bind, site, backlog, contextFactory))
    return application
