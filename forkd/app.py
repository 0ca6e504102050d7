"""Application: the picklable object a .tap file holds (the seed's twisted.main.Application).

An Application is a name, an optional uid/gid to run as, and a list of ports, each with its
factory. mktap builds one and pickles it; `forkd start` unpickles it in the master.

Inside a running forkd the master attaches itself as the application's *runtime*: then
`listenTCP`, `listenSSL`, `listenUNIX`, `addPort` and `removePort` take effect at once (the
master binds the port and every worker starts serving it), which is what makes the seed's
live `__main__.application.listenTCP(8443, factory)` work.
"""

from __future__ import annotations

import os
import re
from typing import Any, Protocol

from forkd import tapfile
from forkd.ports import DEFAULT_BACKLOG, TCPPort, UNIXPort, port_key

TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # <base>-TAG.tap: no path, no blank


class Runtime(Protocol):
    """What a running master offers the application (absent in mktap and in tests)."""

    def portAdded(self, port: Any) -> None:
        """Bind `port` and have every worker serve it; raise to refuse (port in use)."""

    def portRemoved(self, port: Any) -> None:
        """Have the workers stop serving `port`, then close it."""


class Application:
    """A named set of ports, saved to and loaded from .tap files."""

    def __init__(self, name: str, uid: int | None = None, gid: int | None = None) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.ports: list[Any] = []
        self.tapfile: str | None = None  # where it was loaded from: save() writes beside it
        self.disk_stamp: tapfile.Stamp | None = None  # the version of the tap it came from
        self.runtime: Runtime | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["runtime"] = None
        state["tapfile"] = None
        state.pop("disk_stamp", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("runtime", None)
        self.__dict__.setdefault("tapfile", None)
        self.__dict__.setdefault("disk_stamp", None)

    def __repr__(self) -> str:
        return f"<Application {self.name!r} ports={self.ports!r}>"

    # -- ports ----------------------------------------------------------------------------
    def listenTCP(
        self, port: int, factory: Any, backlog: int = DEFAULT_BACKLOG, interface: str = ""
    ) -> TCPPort:
        """Serve `factory` on TCP `port` (on every IPv4 address unless `interface` says)."""
        tcp = TCPPort(_tcp_port(port), factory, backlog=backlog, interface=interface)
        self.addPort(tcp)
        return tcp

    def listenSSL(
        self,
        port: int,
        factory: Any,
        contextFactory: Any,
        backlog: int = DEFAULT_BACKLOG,
        interface: str = "",
    ) -> TCPPort:
        """Serve `factory` over TLS on TCP `port`: Twisted's listenSSL. `contextFactory`
        (a `forkd.tls.ServerContextFactory`) pickles into the tap and gives each worker
        its `ssl.SSLContext` through `getContext()`."""
        if not callable(getattr(contextFactory, "getContext", None)):
            raise TypeError(
                f"{contextFactory!r} is not a context factory: give a "
                "forkd.tls.ServerContextFactory(certfile, keyfile)"
            )
        if getattr(factory, "servedByMaster", False):
            # the master's own loop accepts such ports in plain text: never pretend otherwise
            raise ValueError(f"{factory!r} is served by the master, which does not serve TLS")
        ssl_port = TCPPort(
            _tcp_port(port),
            factory,
            backlog=backlog,
            interface=interface,
            contextFactory=contextFactory,
        )
        self.addPort(ssl_port)
        return ssl_port

    def listenUNIX(
        self, filename: str, factory: Any, backlog: int = DEFAULT_BACKLOG, mode: int = 0o666
    ) -> UNIXPort:
        """Serve `factory` on a UNIX-domain socket at `filename`."""
        unix = UNIXPort(filename, factory, backlog=backlog, mode=mode)
        self.addPort(unix)
        return unix

    def addPort(self, port: Any) -> Any:
        """Add a port of any transport type (see forkd.ports for the interface)."""
        key = port_key(port)
        if any(port_key(existing) == key for existing in self.ports):
            raise ValueError(f"{key} is already a port of {self.name!r}")
        if self.runtime is not None:
            self.runtime.portAdded(port)
        self.ports.append(port)
        return port

    def getPort(self, key: str | int) -> Any:
        """Find a port by key ('tcp:127.0.0.1:8080', 'unix:/path'), by 'tcp:8080' or 8080
        whatever interface it is bound to, or by path. An unknown or ambiguous name is a
        KeyError whose message lists the ports there are."""
        wanted = str(key)
        found = [port for port in self.ports if wanted in _names(port)]
        if len(found) == 1:
            return found[0]
        keys = ", ".join(port_key(port) for port in (found or self.ports)) or "none"
        if found:
            raise KeyError(f"{wanted} names several ports of {self.name!r}: {keys}")
        raise KeyError(f"no port {wanted} in {self.name!r}; its ports: {keys}")

    def removePort(self, port: Any) -> Any:
        """Remove a port (the object itself, its key or its number) and stop serving it."""
        if not any(port is existing for existing in self.ports):
            port = self.getPort(port)
        if self.runtime is not None:
            self.runtime.portRemoved(port)
        self.ports = [existing for existing in self.ports if existing is not port]
        return port

    # -- saving ---------------------------------------------------------------------------
    def tapPath(self, tag: str | None = None) -> str:
        """The file save(tag) writes: the tap itself, or `<base>-<tag>.tap` beside it."""
        path = self.tapfile or os.path.abspath(f"{self.name}.tap")
        return tapfile.beside(path, f"-{tag}.tap") if tag else path

    def save(self, tag: str | None = None) -> str:
        """Write the application atomically to its tap file, or to `<base>-<tag>.tap`."""
        if tag is not None and not TAG.fullmatch(tag):
            raise ValueError(
                f"bad tag {tag!r}: a tag is a plain name such as 'known-good' "
                "(letters, digits, '.', '_', '-'; up to 64)"
            )
        path = self.tapPath(tag)
        if tag is None:
            self.refuse_overwriting_changes(path)
        tapfile.save(self, path)
        if tag is None:
            self.disk_stamp = tapfile.stamp(path)
        if self.runtime is not None:
            notify = getattr(self.runtime, "applicationSaved", None)
            if notify is not None:
                notify(path, tag)
        return path

    def refuse_overwriting_changes(self, path: str) -> None:
        """Saving over a tap that changed on disk since it was loaded would lose that
        change without a word (the seed's own order: edit in the shell, `mktap --append`,
        then save). Refuse, saying how to keep either side."""
        now = tapfile.stamp(path)
        if self.disk_stamp is None or now is None or now == self.disk_stamp:
            return
        try:
            tapfile.load(path)  # refused unread if not trusted: never run a stranger's pickle
        except tapfile.TapError:  # damaged or emptied: nothing there to lose, the save mends it
            return
        raise tapfile.TapChanged(
            f"{path} changed on disk since it was loaded (mktap --append?); saving would "
            "lose that change: save under a tag (forkctl save TAG), or take the file as "
            "it is with forkctl reload --discard"
        )


def _tcp_port(port: Any) -> int:
    """`port` as a number, or ValueError: refused when it is added, not at `forkd start`,
    since a tap must never hold a port it cannot bind."""
    if (
        isinstance(port, bool)
        or not isinstance(port, (int, str))
        or not (str(port).isdigit() and 0 <= int(port) <= 65535)
    ):
        raise ValueError(f"bad TCP port {port!r}: a port is a number from 0 to 65535")
    return int(port)


def _names(port: Any) -> set[str]:
    """Every name a user may give a port by: its key, its number, `tcp:NUMBER`, its path."""
    names = {port_key(port)}
    number = getattr(port, "port", None)
    if isinstance(number, int):
        names |= {str(number), f"tcp:{number}"}
    path = getattr(port, "path", None)
    if isinstance(path, str):
        names |= {path, f"unix:{path}"}
    return names
