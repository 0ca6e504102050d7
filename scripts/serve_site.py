"""Serve a forkd.web Site in one process on uvloop, for measuring the HTTP path alone.

    python scripts/serve_site.py hello --port 8080
    python scripts/serve_site.py static --path /srv/www --port 8080

Prints `listening on PORT` once the socket is bound (port 0 picks a free one), then serves
until SIGINT/SIGTERM. No master, no workers: this is the per-request cost of forkd.web.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from forkd.protocol import protocol_factory  # noqa: E402
from forkd.web import server, static  # noqa: E402
from forkd.web.hello import Hello  # noqa: E402


def build_site(kind: str, path: str) -> server.Site:
    if kind == "hello":
        return server.Site(Hello())
    return server.Site(static.File(path))


async def serve(site: server.Site, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(protocol_factory(site), host, port, backlog=1024)
    print(f"listening on {srv.sockets[0].getsockname()[1]}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    srv.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["hello", "static"])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--path", default=".")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    site = build_site(args.kind, args.path)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(site, args.host, args.port))
    else:
        asyncio.run(serve(site, args.host, args.port))


if __name__ == "__main__":
    main()
