"""The web tap: serve a directory (and optional virtual hosts) over HTTP with forkd.web.

    mktap web --port 8080 --path /srv/www
    mktap web --path /srv/default --vhost example.com=/srv/example --no-listing
    forkd start web.tap

Modelled on the seed's twisted.tap.web: `Options`, `usage_message`, `getPorts`.
"""

from __future__ import annotations

import os
from typing import Any

from forkd import tls, usage
from forkd.ports import TCPPort
from forkd.web.resource import Resource
from forkd.web.server import Site
from forkd.web.static import File
from forkd.web.vhost import NamedVirtualHost
from workers.site_options import (
    ACCESS_LOG_OPTIONS,
    REQUEST_OPTIONS,
    AccessLogAlias,
    tap_parameters,
    tap_settings,
)

WELCOME = os.path.join(os.path.dirname(os.path.abspath(__file__)), "welcome")

usage_message = """Serve a directory tree over HTTP/1.1 (keep-alive, pipelining, ranges,
conditional requests, sendfile).

--path is the document root, stored as an absolute path (default: a bundled welcome page,
not the current directory, which would publish whatever is there, a .git among it).
--vhost NAME=DIR serves DIR for requests whose Host is NAME (any port, any case); other
hosts get --path. Directories without an index file are listed unless --no-listing.
--access-logfile FILE (or - for standard output) writes an access log, buffered, in
gunicorn's combined format unless --access-logformat says otherwise (json: JSON lines).
--certfile FILE (and --keyfile, unless the key is in it) serves HTTPS instead of HTTP;
--ca-certs FILE asks clients for certificates issued by those CAs.
Behind a proxy, --forwarded-allow-ips names the ones whose X-Forwarded-For /
X-Forwarded-Proto / Forwarded headers are believed (default $FORWARDED_ALLOW_IPS, else
127.0.0.1); gunicorn's --limit-request-* and uvicorn's --limit-concurrency bound requests.
Change it live from `forkctl shell`:
    application.ports[0].factory.resource.path = '/srv/other'
"""


def _directory(value: str, what: str) -> str:
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isdir(path):
        raise usage.UsageError(f"{what}: {value!r} is not a directory")
    return path


class Options(AccessLogAlias):
    optParameters = (
        [
            ["port", "p", 8080, "TCP port to listen on.", usage.portCoerce],
            [
                "interface",
                "i",
                "127.0.0.1",
                "Address to listen on: loopback unless told "
                "(0.0.0.0: every IPv4 address, '::': IPv6).",
            ],
            ["path", None, None, "Directory to serve [default: the bundled welcome page]."],
        ]
        + tap_parameters(ACCESS_LOG_OPTIONS + REQUEST_OPTIONS)
        + list(tls.optParameters)
    )
    optFlags = [
        ["no-listing", None, "Answer 403 for directories without an index file."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["indexes"] = []
        self["vhosts"] = []

    def opt_index(self, name: str) -> None:
        """Name of a directory's index file; repeat for several [default: index.html]."""
        if not name or "/" in name:
            raise usage.UsageError(f"--index takes a file name, not {name!r}")
        self["indexes"].append(name)

    def opt_vhost(self, spec: str) -> None:
        """NAME=DIR: serve DIR for Host NAME (repeatable)."""
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise usage.UsageError(f"--vhost wants NAME=DIR, not {spec!r}")
        self["vhosts"].append((name, _directory(directory, "--vhost")))

    def postOptions(self) -> None:
        self["path"] = _directory(self["path"] or WELCOME, "--path")
        self["tls"] = tls.fromConfig(self)  # the certificate loads now, or mktap says why


def makeResource(config: Any) -> Resource:
    """The resource tree the options describe: a File, or a NamedVirtualHost of Files."""
    indexes = list(config["indexes"]) or ["index.html"]
    listing = not config["no-listing"]
    root = File(config["path"], indexNames=indexes, listing=listing)
    if not config["vhosts"]:
        return root
    hosts = NamedVirtualHost()
    hosts.default = root
    for name, directory in config["vhosts"]:
        hosts.addHost(name, File(directory, indexNames=indexes, listing=listing))
    return hosts


def getPorts(app: Any, config: Any) -> list[tuple[Any, Site]]:
    site = Site(
        makeResource(config),
        logPath=config["access-logfile"],
        logFormat=config["access-logformat"],
    )
    for attribute, value in tap_settings(config, REQUEST_OPTIONS).items():
        setattr(site, attribute, value)  # on the instance, so it pickles into the tap
    port = TCPPort(
        config["port"], site, interface=config["interface"], contextFactory=config["tls"]
    )
    return [(port, site)]
