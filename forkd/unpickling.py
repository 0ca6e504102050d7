"""What a tap file may name when it is loaded: an allowlist, checked before anything runs.

Unpickling calls whatever the pickle names, so a list of what is forbidden always misses
something (`timeit.timeit`, `pydoc.pipepager` and `io.open` all ran under `forkd check`
before the "not an Application" refusal). So a tap may name only:

- classes of forkd and of the bundled tap modules (`workers`);
- classes and functions of the packages the tap was made from: mktap records them in the
  tap's header (`modules=`), and of installed tap plug-ins (the `forkd.taps` entry points);
- packages an operator names in FORKD_TAP_MODULES (comma-separated), for taps from
  elsewhere;
- plain data types of the standard library (`SAFE_GLOBALS`), nothing else of it.

A declared package may not be part of the standard library, and a name is refused before
its module is imported, so nothing outside the list is imported or called. The refusal
names the global and says how to allow a package.
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import pickletools
import sys
from typing import Any

ENV = "FORKD_TAP_MODULES"
OWN_PACKAGES = frozenset({"forkd", "workers"})

SAFE_GLOBALS: dict[str, frozenset[str]] = {
    "builtins": frozenset(
        {
            "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple",
            "set", "frozenset", "dict", "slice", "range", "object", "Ellipsis",
            "NotImplemented",
        }
    ),
    "copyreg": frozenset({"_reconstructor", "__newobj__", "__newobj_ex__"}),
    "collections": frozenset({"OrderedDict", "defaultdict", "deque", "Counter"}),
    "datetime": frozenset({"date", "time", "datetime", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "fractions": frozenset({"Fraction"}),
    "uuid": frozenset({"UUID", "SafeUUID"}),
    "ipaddress": frozenset(
        {
            "IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network", "IPv4Interface",
            "IPv6Interface",
        }
    ),
    "pathlib": frozenset({"Path", "PosixPath", "PurePath", "PurePosixPath"}),
    "re": frozenset({"_compile"}),
    "array": frozenset({"array", "_array_reconstructor"}),
    "functools": frozenset({"partial"}),
}  # fmt: skip


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names something a tap may not (os.system, builtins.eval, ...)."""


def _root(module: str) -> str:
    return module.split(".", 1)[0]


def _is_stdlib(package: str) -> bool:
    return package in sys.stdlib_module_names or package == "__builtin__"


def declarable(package: str) -> bool:
    """Whether a tap may declare `package` as one it was made from."""
    return package.isidentifier() and not _is_stdlib(package) and package not in OWN_PACKAGES


def plugin_packages() -> set[str]:
    """The packages of the installed tap plug-ins (entry points `forkd.taps`)."""
    packages = set()
    for entry in importlib.metadata.entry_points(group="forkd.taps"):
        packages.add(_root(entry.value.split(":", 1)[0]))
    return {package for package in packages if declarable(package)}


def operator_packages() -> set[str]:
    return {name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()}


class TapUnpickler(pickle.Unpickler):
    """Loads a tap, naming only what this module's docstring allows."""

    def __init__(self, file: Any, declared: set[str]) -> None:
        super().__init__(file)
        self.theirs = {p for p in declared if declarable(p)} | plugin_packages()
        self.theirs |= {p for p in operator_packages() if p not in OWN_PACKAGES}

    def find_class(self, module: str, name: str) -> Any:
        root = _root(module)
        if name in SAFE_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if root in OWN_PACKAGES or root in self.theirs:
            found = super().find_class(module, name)
            defined_in = _root(getattr(found, "__module__", "") or "")
            kinds_allowed = (type,) if root in OWN_PACKAGES else (type, type(_root))
            if isinstance(found, kinds_allowed) and defined_in == root:
                return found
            raise self.refused(module, name, "not one of its classes")
        raise self.refused(module, name, "not a package a tap may use")

    def refused(self, module: str, name: str, why: str) -> RefusedGlobal:
        allowed = ", ".join(sorted({"forkd", "workers", *self.theirs}))
        hint = (
            ""
            if _is_stdlib(_root(module))
            else f"; if {_root(module)} is yours, allow it with {ENV}={_root(module)}"
        )
        return RefusedGlobal(
            f"it names {module}.{name} ({why}): a tap may name the classes of {allowed} "
            f"and plain data types{hint}"
        )


def packages_named(data: bytes) -> set[str]:
    """The top-level packages whose globals a pickle names, found without loading it:
    what mktap records in the header so the loader lets them in."""
    recent: list[Any] = []
    memo: dict[int, Any] = {}
    found: set[str] = set()
    for opcode, argument, _ in pickletools.genops(data):
        name = opcode.name
        if name == "GLOBAL":
            found.add(_root(str(argument).split(" ", 1)[0]))
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            recent.append(argument)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(argument or 0)] = recent[-1] if recent else None
        elif name in ("PROTO", "FRAME"):
            continue  # framing, not data: a (module, name) pair may straddle it
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(int(argument or 0)))
        elif name == "STACK_GLOBAL" and len(recent) >= 2 and isinstance(recent[-2], str):
            found.add(_root(recent[-2]))
        else:
            recent.append(None)  # anything else breaks a (module, name) pair
        del recent[:-2]
    return {package for package in found if declarable(package)}
