"""The Site settings that the wsgi and asgi taps and `forkd serve` share as options.

One table, so a setting gets the same name, parsing and help everywhere (the peers' names
where they have one: uvicorn's `--ws-*`, gunicorn's `--access-logfile` and
`--access-logformat`; the web and hello taps take the access log's rows too). Light to
import: `forkd serve` parses its command line with it before anything of the WSGI/ASGI
machinery is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from forkd import usage
from forkd.web.logformat import compile_format
from forkd.web.server import Site


def boolean(text: str) -> bool:
    """A yes/no option value, as uvicorn's `--ws-per-message-deflate true` takes it."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def log_file(path: str) -> str:
    """An access log path, made absolute where the tap is made (a worker's directory is
    not the command line's); "-" is standard output."""
    return path if path == "-" else os.path.abspath(os.path.expanduser(path))


def log_format(text: str) -> str:
    """An access log format forkd.web can compile (checked when the tap is made, so a bad
    one is a usage error, never a worker that fails to boot)."""
    try:
        compile_format(text)
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    return text


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
        default = getattr(Site, self.attribute)
        return self.help if default is None else f"{self.help} [default: {default}]"


ACCESS_LOG_OPTIONS = (
    SiteOption(
        "access-logfile",
        "logPath",
        log_file,
        "Access log FILE, or - for standard output (off unless given; buffered, reopened on USR1).",
    ),
    SiteOption(
        "access-logformat",
        "logFormat",
        log_format,
        "The access log's lines: gunicorn's atoms, or json (JSON lines), json:HEADER,... "
        "(with those request headers); see docs/OPERATIONS.md.",
    ),
)

SITE_OPTIONS = ACCESS_LOG_OPTIONS + (
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


def tap_parameters(options: tuple[SiteOption, ...]) -> list[list[Any]]:
    """`options` as a tap's `optParameters` rows."""
    return [[option.name, None, None, option.describe(), option.coerce] for option in options]


class AccessLogAlias(usage.Options):
    """`--access-log FILE`, the HTTP taps' name before gunicorn's --access-logfile."""

    def opt_access_log(self, path: str) -> None:
        """Same as --access-logfile."""
        self["access-logfile"] = log_file(path)


def site_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The Site attributes given among parsed option `values` (keyed by option dest)."""
    return {
        option.attribute: values[option.dest]
        for option in SITE_OPTIONS
        if values.get(option.dest) is not None
    }
