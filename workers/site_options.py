"""The Site settings that the wsgi and asgi taps and `forkd serve` share as options.

One table, so a setting gets the same name, parsing and help everywhere (the peers' names
where they have one: uvicorn's `--ws-*`). Light to import: `forkd serve` parses its
command line with it before anything of the WSGI/ASGI machinery is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from forkd.web.server import Site


def boolean(text: str) -> bool:
    """A yes/no option value, as uvicorn's `--ws-per-message-deflate true` takes it."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


@dataclass(frozen=True)
class SiteOption:
    """A command-line option that sets one Site attribute, the same on the wsgi and asgi
    taps and on `forkd serve` (where the peers have a name for it, theirs)."""

    name: str
    attribute: str
    coerce: Callable[[str], Any]
    help: str
    aliases: tuple[str, ...] = ()  # the other peer's name, on `forkd serve`

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def describe(self) -> str:
        return f"{self.help} [default: {getattr(Site, self.attribute)}]"


SITE_OPTIONS = (
    SiteOption(
        "keep-alive",
        "keepAliveTimeout",
        float,
        "Seconds an idle keep-alive connection is kept open.",
        aliases=("timeout-keep-alive",),
    ),
    SiteOption("ws-max-size", "websocketMaxSize", int, "Largest WebSocket message, bytes."),
    SiteOption(
        "ws-ping-interval", "websocketPingInterval", float, "Seconds between WebSocket pings."
    ),
    SiteOption(
        "ws-ping-timeout", "websocketPingTimeout", float, "Seconds to wait for a ping's pong."
    ),
    SiteOption(
        "ws-per-message-deflate",
        "websocketPerMessageDeflate",
        boolean,
        "Offer WebSocket compression (true/false).",
    ),
    SiteOption(
        "websocket-drain",
        "websocketDrain",
        float,
        "Seconds a draining worker leaves WebSockets open before closing them (1012/1001).",
    ),
)


def site_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The Site attributes given among parsed option `values` (keyed by option dest)."""
    return {
        option.attribute: values[option.dest]
        for option in SITE_OPTIONS
        if values.get(option.dest) is not None
    }
