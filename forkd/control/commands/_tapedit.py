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


def add_ports(running: Any, path: str, ports: list[Any]) -> str:
    on_disk = tapfile.load(path)
    keys = {port_key(port) for port in on_disk.ports}
    on_disk.ports.extend(port for port in ports if port_key(port) not in keys)
    _write(running, on_disk, path)
    return path


def remove_port(running: Any, path: str, key: str) -> str:
    on_disk = tapfile.load(path)
    on_disk.ports = [port for port in on_disk.ports if port_key(port) != key]
    _write(running, on_disk, path)
    return path


def _write(running: Any, edited: Any, path: str) -> None:
    """Save the edited file. If the running application was the file's version before the
    edit, it still is after (both got the same change), so a later `forkctl save` must not
    take this edit for someone else's."""
    in_step = running.disk_stamp is not None and running.disk_stamp == edited.disk_stamp
    tapfile.save(edited, path)
    if in_step:
        running.disk_stamp = tapfile.stamp(path)
