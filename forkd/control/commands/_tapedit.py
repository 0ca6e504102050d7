"""Writing live port changes into the tap file, as `mktap --append` would.

`forkctl append/remove` change the running application and then the file on disk, so a
reload or a restart of forkd keeps the change. Only the ports named are added to or removed
from the file as it is on disk now: unsaved shell edits stay unsaved (a reload still warns
about them), and an edit someone made to the file meanwhile is kept.
"""

from __future__ import annotations

from typing import Any

from forkd import tapfile
from forkd.ports import port_key


def add_ports(path: str, ports: list[Any]) -> str:
    application = tapfile.load(path)
    keys = {port_key(port) for port in application.ports}
    application.ports.extend(port for port in ports if port_key(port) not in keys)
    tapfile.save(application, path)
    return path


def remove_port(path: str, key: str) -> str:
    application = tapfile.load(path)
    application.ports = [port for port in application.ports if port_key(port) != key]
    tapfile.save(application, path)
    return path
