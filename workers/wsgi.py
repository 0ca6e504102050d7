"""The wsgi tap: a WSGI application (Flask, Django, ...) served by forkd's workers.

    mktap wsgi --app myproject.wsgi:application --port 8000
    forkd start wsgi.tap -w 4

See workers.hosting for how the application is named and imported.
"""

from __future__ import annotations

import os
from typing import Any

from forkd import tls, usage
from forkd.ports import TCPPort
from forkd.web.server import Site
from workers.hosting import SITE_OPTIONS, HostedSite, load_application
from workers.site_options import AccessLogAlias, tap_parameters, tap_settings

usage_message = """Serve a WSGI application (PEP 3333: Flask, Django, Falcon, ...) over HTTP/1.1.

--app names it as gunicorn does: MODULE:ATTRIBUTE (myproject.wsgi:application) or
MODULE:FACTORY() for an application factory. --pythonpath (default: the directory mktap
ran in) is where MODULE is imported from. The application runs in --threads threads per
worker; the sockets stay with the event loop. --access-logfile FILE (or -) logs every
request, in gunicorn's --access-logformat (default: the combined format; json: JSON lines).
--certfile FILE (and --keyfile) serves HTTPS.

Behind a proxy: --forwarded-allow-ips (default $FORWARDED_ALLOW_IPS, else 127.0.0.1)
names the proxies whose X-Forwarded-For / X-Forwarded-Proto / Forwarded are believed;
--root-path (default $SCRIPT_NAME) is the path the proxy mounts the application at.
gunicorn's --limit-request-line/-fields/-field_size and uvicorn's --limit-concurrency
bound each request and the requests in progress per worker.
"""

INTERFACE = "wsgi"


class Options(AccessLogAlias):
    optFlags = [
        ["no-preload", None, "Import the application in each worker, not once in the master."],
    ]
    optParameters = (
        [
            ["app", "a", None, "The application, MODULE:ATTRIBUTE."],
            ["port", "p", 8000, "TCP port to listen on.", usage.portCoerce],
            ["interface", "i", "127.0.0.1", "Address to listen on (0.0.0.0: every IPv4 address)."],
            ["threads", "t", 8, "Threads running the application, per worker (WSGI).", int],
            ["pythonpath", None, None, "Where MODULE is imported from [default: here]."],
        ]
        + tap_parameters(SITE_OPTIONS)
        + list(tls.optParameters)
    )

    def postOptions(self) -> None:
        if not self["app"]:
            raise usage.UsageError("--app MODULE:ATTRIBUTE is required")
        if self["threads"] < 1:
            raise usage.UsageError("--threads must be at least 1")
        self["pythonpath"] = os.path.abspath(self["pythonpath"] or os.getcwd())
        self["tls"] = tls.fromConfig(self)  # the certificate loads now, or mktap says why
        try:  # found now, not at the first request: as gunicorn --check-config
            load_application(self["app"], self["pythonpath"])
        except Exception as error:
            raise usage.UsageError(
                f"--app {self['app']}: {type(error).__name__}: {error}"
            ) from None


def getPorts(app: Any, config: Any, interface: str = INTERFACE) -> list[tuple[Any, Site]]:
    site = HostedSite(
        config["app"],
        config["pythonpath"],
        interface,
        config["threads"],
        settings=tap_settings(config),
    )
    site.preloadApp = not config["no-preload"]
    port = TCPPort(
        config["port"], site, interface=config["interface"], contextFactory=config["tls"]
    )
    return [(port, site)]
