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


def available() -> list[tuple[str, str]]:
    """(name, first line of usage_message) for every registered tap module."""
    listing = []
    for name, ep in sorted(entry_points().items()):
        try:
            module = ep.load()
            summary = (getattr(module, "usage_message", "") or "").strip().splitlines()
            listing.append((name, summary[0] if summary else ""))
        except Exception as error:  # a broken plug-in must not hide the others
            listing.append((name, f"(does not load: {type(error).__name__}: {error})"))
    return listing


def options_for(module: ModuleType) -> Any:
    """A fresh Options instance for `module`, carrying its usage_message for --help."""
    config = module.Options()
    message = getattr(module, "usage_message", None)
    if message and not getattr(config, "longdesc", None):
        config.longdesc = message
    return config


def apply(module: ModuleType, application: Any, config: Any) -> list[Any]:
    """Add the tap module's ports to `application`; returns the ports added."""
    before = list(application.ports)
    if hasattr(module, "getPorts"):
        for port, factory in module.getPorts(application, config):
            if isinstance(port, int):
                application.listenTCP(port, factory)
            elif isinstance(port, str):
                application.listenUNIX(port, factory)
            else:
                if getattr(port, "factory", None) is None:
                    port.factory = factory
                application.addPort(port)
    else:
        module.updateApplication(application, config)
    return [port for port in application.ports if not any(port is old for old in before)]
