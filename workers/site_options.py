"""The Site settings that the wsgi and asgi taps and `forkd serve` share as options.

One table, so a setting gets the same name, parsing and help everywhere (the peers' names
where they have one: uvicorn's `--ws-*`, gunicorn's `--access-logfile` and
`--access-logformat`, `--limit-request-*`, `--forwarded-allow-ips`; the web and hello
taps take the access log's rows too, the web tap `REQUEST_OPTIONS`). Light to import:
`forkd serve` parses its command line with it before anything of the WSGI/ASGI machinery
is loaded.

An option with an environment variable (FORWARDED_ALLOW_IPS, SCRIPT_NAME, as gunicorn and
uvicorn read them) takes the variable's value when it is not given, read when the tap is
made: the tap keeps what it said, as a gunicorn started with it would.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from forkd import usage
from forkd.web.logformat import compile_format
from forkd.web.proxy import TrustedProxies
from forkd.web.server import Site

#: gunicorn's most header fields (forkd.web's maxHeaderSize holds fewer anyway)
MAX_REQUEST_FIELDS = 32768
_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]*)*")


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


def whole_number(text: str) -> int:
    """0 or more, in decimal digits."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def field_count(text: str) -> int:
    count = whole_number(text)
    if count > MAX_REQUEST_FIELDS:
        raise ValueError(f"at most {MAX_REQUEST_FIELDS} (gunicorn's maximum), not {count}")
    return count


def root_path(text: str) -> str:
    """A URL path prefix (`/api`), without its trailing slash; "" or "/" for none."""
    if text and not text.startswith("/"):
        raise ValueError(f"a root path begins with /: {text!r}")
    if not _PATH.fullmatch(text):
        raise ValueError(f"not a plain URL path (letters, digits, -._~ and the like): {text!r}")
    return text.rstrip("/")


def proxy_addresses(text: str) -> TrustedProxies:
    """`--forwarded-allow-ips`: addresses and networks, comma-separated, or `*`."""
    return TrustedProxies.parse(text)


@dataclass(frozen=True)
class SiteOption:
    """A command-line option that sets one Site attribute, the same on the wsgi and asgi
    taps and on `forkd serve` (where the peers have a name for it, theirs)."""

    name: str
    attribute: str
    coerce: Callable[[str], Any]
    help: str
    aliases: tuple[str, ...] = ()  # the other peer's name, on `forkd serve`
    env: str | None = None  # read when the option is not given
    #: the default as the help shows it, for an attribute the plain Site does not have
    shown_default: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def describe(self) -> str:
        default = self.shown_default
        if default is None:
            default = getattr(Site, self.attribute)
        if self.env is not None:
            default = f"${self.env}, else {default or 'none'}"
        return self.help if default is None else f"{self.help} [default: {default}]"

    def from_environment(self) -> Any:
        """The value of the option's environment variable, or None when it is not set."""
        if self.env is None or self.env not in os.environ:
            return None
        try:
            return self.coerce(os.environ[self.env])
        except ValueError as error:
            raise usage.UsageError(f"${self.env}: {error}") from None


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

REQUEST_OPTIONS = (
    SiteOption(
        "forwarded-allow-ips",
        "trustedProxies",
        proxy_addresses,
        "Comma-separated addresses and networks (10.0.0.0/8) of the proxies whose "
        "X-Forwarded-For, X-Forwarded-Proto and Forwarded headers are believed; * for "
        "any, '' for none (a UNIX-socket peer is always trusted).",
        env="FORWARDED_ALLOW_IPS",
        shown_default="127.0.0.1",
    ),
    SiteOption(
        "limit-request-line",
        "limitRequestLine",
        whole_number,
        "Longest request line (method, target, version) in bytes, else 414; 0: no limit.",
    ),
    SiteOption(
        "limit-request-fields",
        "limitRequestFields",
        field_count,
        f"Most header fields in a request (at most {MAX_REQUEST_FIELDS}), else 431; 0: no "
        "count, only the 64 KiB header block bounds them.",
    ),
    SiteOption(
        "limit-request-field_size",
        "limitRequestFieldSize",
        whole_number,
        "Longest header field (Name: value) in bytes, else 431; 0: no limit.",
        aliases=("limit-request-field-size",),
    ),
    SiteOption(
        "limit-concurrency",
        "limitConcurrency",
        whole_number,
        "Requests in progress per worker beyond which a new one is answered 503 with "
        "Retry-After, the application not called; 0: no limit.",
    ),
)

SITE_OPTIONS = (
    ACCESS_LOG_OPTIONS
    + REQUEST_OPTIONS
    + (
        SiteOption(
            "limit-request-body",
            "maxBodySize",
            int,
            "Largest request body, bytes (0: no limit; 413 beyond it).",
            shown_default="0",  # HostedSite's, as gunicorn and uvicorn: bodies stream
        ),
        SiteOption(
            "root-path",
            "rootPath",
            root_path,
            "The URL path a proxy mounts the application at (/api): WSGI SCRIPT_NAME, ASGI "
            "root_path; the proxy may strip it from the requests or pass it on.",
            env="SCRIPT_NAME",
            shown_default="",
        ),
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
)


def tap_parameters(options: tuple[SiteOption, ...]) -> list[list[Any]]:
    """`options` as a tap's `optParameters` rows."""
    return [[option.name, None, None, option.describe(), option.coerce] for option in options]


class AccessLogAlias(usage.Options):
    """`--access-log FILE`, the HTTP taps' name before gunicorn's --access-logfile."""

    def opt_access_log(self, path: str) -> None:
        """Same as --access-logfile."""
        self["access-logfile"] = log_file(path)


def site_settings(
    values: Mapping[str, Any], options: Iterable[SiteOption] = SITE_OPTIONS
) -> dict[str, Any]:
    """The Site attributes given among parsed option `values` (keyed by option dest), or
    set by their environment variables; UsageError for a bad environment value."""
    settings = {}
    for option in options:
        value = values.get(option.dest)
        if value is None:
            value = option.from_environment()
        if value is not None:
            settings[option.attribute] = value
    return settings


def tap_settings(
    config: Mapping[str, Any], options: Iterable[SiteOption] = SITE_OPTIONS
) -> dict[str, Any]:
    """`site_settings` from a tap's parsed `usage.Options` (keyed by option name)."""
    chosen = tuple(options)
    return site_settings({option.dest: config[option.name] for option in chosen}, chosen)
