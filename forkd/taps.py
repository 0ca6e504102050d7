"""Finding tap modules and applying them to an Application.

A tap module (the seed's twisted.tap.*) has `Options`, `usage_message`, and either
`getPorts(app, config)`, returning a list of `(port, factory)`, or the later
`updateApplication(app, config)`. Tap modules are found by name: first in the `forkd.taps`
entry-point group (where the bundled ones are registered too), then as an importable dotted
module path (`mktap mypkg.mytap ...`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from types import ModuleType
from typing import Any

ENTRY_POINT_GROUP = "forkd.taps"
BUNDLED_PACKAGE = "workers"


class TapNotFound(Exception):
    """No tap module by that name; the message says where forkd looked."""


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def find(name: str) -> ModuleType:
    """The tap module called `name`: a registered entry point, else an importable module."""
    registered = entry_points().get(name)
    if registered is not None:
        module = registered.load()
        if not isinstance(module, ModuleType):
            raise TapNotFound(f"entry point {name!r} in {ENTRY_POINT_GROUP} is not a module")
        return check(module)
    candidates = [name] if "." in name else [name, f"{BUNDLED_PACKAGE}.{name}"]
    for candidate in reversed(candidates):
        try:
            return check(importlib.import_module(candidate))
        except ModuleNotFoundError as error:
            if error.name is not None and not candidate.startswith(error.name):
                raise  # the tap exists but something it imports is missing: say so
    raise TapNotFound(f"no tap module named {name!r} (mktap --list shows the known ones)")


def check(module: ModuleType) -> ModuleType:
    """Refuse a module that does not follow the tap interface."""
    missing = [attr for attr in ("Options",) if not hasattr(module, attr)]
    if not hasattr(module, "getPorts") and not hasattr(module, "updateApplication"):
        missing.append("getPorts")
    if missing:
        raise TapNotFound(f"{module.__name__} is not a tap module (it lacks {', '.join(missing)})")
    return module


def summary(module: ModuleType) -> str:
    """The first paragraph of a tap module's usage_message, on one line: the first line
    alone cut sentences in half."""
    text = (getattr(module, "usage_message", "") or "").strip()
    return " ".join(text.split("\n\n", 1)[0].split())


def available() -> list[tuple[str, str]]:
    """(name, summary) for every registered tap module."""
    listing = []
    for name, ep in sorted(entry_points().items()):
        try:
            module = ep.load()
            listing.append((name, summary(module)))
        except Exception as error:  # a broken plug-in must not hide the others
            listing.append((name, f"(does not load: {type(error).__name__}: {error})"))
    return listing


class BadTap(Exception):
    """A tap module's getPorts returned something forkd cannot serve; the message says what."""


def importable_here() -> None:
    """Put the current directory on sys.path, as `python -m` and gunicorn do: `mktap
    shouter` beside shouter.py must find it even from an installed `mktap` script, whose
    own directory is all Python puts there."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    # and for the processes a master starts later from elsewhere (a daemon is in /): the
    # tap validator and the re-executed image of a reload
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [here, *paths] if p)


def load(name: str) -> ModuleType:
    """Find and import tap module `name` (mktap and `forkctl append` alike): any failure,
    the module's own top-level code raising included, is one line in a TapNotFound."""
    try:
        return find(name)
    except TapNotFound:
        raise
    except ImportError as error:
        raise TapNotFound(f"tap module {name!r} does not import: {error}") from None
    except Exception as error:
        raise TapNotFound(
            f"tap module {name!r} does not import: {type(error).__name__}: {error}"
        ) from None


def make_options(module: ModuleType, name: str, synopsis: str = "") -> Any:
    """A fresh instance of the module's Options (mktap and `forkctl append` alike); Options
    that cannot even be made are a BadTap with one line."""
    try:
        config = options_for(module)
    except Exception as error:
        raise BadTap(
            f"tap module {name!r}: its Options cannot be created: {type(error).__name__}: {error}"
        ) from None
    if synopsis and not getattr(config, "synopsis", None):
        config.synopsis = synopsis
    return config


def options_for(module: ModuleType) -> Any:
    """A fresh Options instance for `module`, carrying its usage_message for --help."""
    config = module.Options()
    message = getattr(module, "usage_message", None)
    if message and not getattr(config, "longdesc", None):
        config.longdesc = message
    return config


def checked_pairs(name: str, result: Any) -> list[tuple[Any, Any]]:
    """`getPorts`' result as a list of (port, factory), or BadTap naming what is wrong.

    A tap module is a user's own code: a wrong return value must be one clear line from
    mktap, not a tap file that fails only at `forkd start` (or an unpacking traceback)."""
    if isinstance(result, (str, bytes)) or not isinstance(result, (list, tuple)):
        raise BadTap(
            f"{name}.getPorts returned {type(result).__name__}, not a list of (port, factory) pairs"
        )
    pairs = []
    for index, item in enumerate(result):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            shown = f"{len(item)} items" if isinstance(item, (list, tuple)) else repr(item)
            raise BadTap(f"{name}.getPorts item {index} is not a (port, factory) pair: {shown}")
        port, factory = item
        if isinstance(port, bool) or not isinstance(port, (int, str)):
            if not callable(getattr(port, "startListening", None)):
                raise BadTap(
                    f"{name}.getPorts item {index}: port {port!r} is not a port number, "
                    "a UNIX socket path or a port object (startListening, fileno, key)"
                )
            factory = factory if factory is not None else getattr(port, "factory", None)
        if not callable(getattr(factory, "buildProtocol", None)):
            raise BadTap(
                f"{name}.getPorts item {index}: {factory!r} is not a factory "
                "(it has no buildProtocol; subclass forkd.protocol.Factory)"
            )
        pairs.append((port, factory))
    return pairs


def apply(module: ModuleType, application: Any, config: Any) -> list[Any]:
    """Add the tap module's ports to `application`; returns the ports added.

    All or nothing: the ports are checked before any is added, so a failure leaves
    `application` as it was (mktap --append never writes half a tap module)."""
    before = list(application.ports)
    if hasattr(module, "getPorts"):
        pairs = checked_pairs(module.__name__, module.getPorts(application, config))
        try:
            for port, factory in pairs:
                if isinstance(port, int):
                    application.listenTCP(port, factory)
                elif isinstance(port, str):
                    application.listenUNIX(port, factory)
                else:
                    if getattr(port, "factory", None) is None:
                        port.factory = factory
                    application.addPort(port)
        except BaseException:
            application.ports[:] = before
            raise
    else:
        module.updateApplication(application, config)
    return [port for port in application.ports if not any(port is old for old in before)]
