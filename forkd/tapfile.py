"""Reading and writing .tap files safely.

A .tap file is a short text header and a pickle of an Application:

    FORKDTAP 1 forkd=0.1.0\\n
    <pickle, protocol 5>

The header lets forkd refuse a file that is not a tap, or one written by a newer format,
with a clear message instead of an unpickling traceback.

Saving is atomic: the pickle goes to a temporary file in the same directory, is fsynced, and
renamed over the target, so a crash mid-save never leaves a broken tap.

Unpickling runs code. forkd therefore loads only files that no one else could have written:
a tap that is group- or world-writable, or owned by a user other than the one loading it (or
root), is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import stat
import tempfile
import time
from typing import Any, Protocol, runtime_checkable

from forkd import __version__
from forkd.unpickling import RefusedGlobal, TapUnpickler, packages_named

MAGIC = b"FORKDTAP"
FORMAT = 1
MAX_HEADER = 4096  # the header line, with the packages a tap names


class TapError(Exception):
    """A tap file cannot be used; the message is one line naming the file and the reason."""


class TapChanged(TapError):
    """The tap on disk is not the one the application was loaded from: saving over it
    would throw away what changed there (a `mktap --append` made meanwhile)."""


Stamp = tuple[int, int, int]  # (inode, size, mtime_ns): which version of a file this is


def stamp(path: str) -> Stamp | None:
    """The version of the file at `path` now, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def header(packages: set[str] | frozenset[str] = frozenset()) -> bytes:
    """`FORKDTAP <format> forkd=<version> [modules=a,b]`: the packages the pickle names
    besides forkd's own and the standard library, which the loader will let it use."""
    line = b"%s %d forkd=%s" % (MAGIC, FORMAT, __version__.encode())
    if packages:
        line += b" modules=" + ",".join(sorted(packages)).encode()
    return line + b"\n"


class UnpicklableError(TapError, pickle.PicklingError, TypeError):
    """Something reachable from the application cannot be pickled; the message names it.

    Also a PicklingError and a TypeError (what pickle itself raises for a socket), so code
    written against pickle's own errors still catches it."""


MAX_DEPTH = 64  # how deep unpicklable_path looks: factories rarely nest deeper


def _children(value: Any) -> list[tuple[str, Any]]:
    """(path suffix, child) for what pickle would descend into below `value`."""
    if isinstance(value, dict):
        return [(f"[{key!r}]", item) for key, item in value.items()]
    if isinstance(value, (list, tuple)):
        return [(f"[{index}]", item) for index, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return [(f"<item {item!r}>", item) for item in value]
    try:
        state = value.__getstate__() if hasattr(value, "__getstate__") else None
    except Exception:
        return []
    if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
        merged: dict[str, Any] = {}
        for part in state:
            if isinstance(part, dict):
                merged.update(part)
        state = merged
    if isinstance(state, dict):
        return [
            (f".{key}" if isinstance(key, str) else f"[{key!r}]", item)
            for key, item in state.items()
        ]
    return []


def unpicklable_path(value: Any, path: str = "application") -> tuple[str, BaseException] | None:
    """The deepest path below `value` that does not pickle, and why; None if it pickles.

    pickle's own error says what (`cannot pickle 'socket' object`) but not where; a user with
    a factory holding a lambda, an open file or a socket needs the attribute's name."""
    try:
        pickle.dumps(value, protocol=5)
    except Exception as error:
        reason: BaseException = error
    else:
        return None
    current = value
    seen: set[int] = set()
    for _ in range(MAX_DEPTH):
        if id(current) in seen:
            break
        seen.add(id(current))
        for suffix, child in _children(current):
            if id(child) in seen:  # a cycle back up: the culprit is elsewhere
                continue
            try:
                pickle.dumps(child, protocol=5)
            except Exception as error:
                path, reason, current = path + suffix, error, child
                break
        else:
            break
    return path, reason


def dumps(application: Any) -> bytes:
    """The tap bytes; UnpicklableError names the attribute that does not pickle."""
    try:
        data = pickle.dumps(application, protocol=5)
    except RecursionError:
        raise UnpicklableError("cannot pickle the application: it nests too deeply") from None
    except Exception as error:
        where = unpicklable_path(application)
        path, reason = where if where is not None else ("application", error)
        raise UnpicklableError(
            f"cannot pickle {path}: {reason} (keep run-time state out of the tap: "
            "create it in startFactory, or drop it in __getstate__)"
        ) from None
    return header(packages_named(data)) + data


def save(application: Any, path: str) -> None:
    """Write `application` to `path` atomically (temp file, fsync, rename)."""
    data = dumps(application)
    directory = os.path.dirname(os.path.abspath(path))
    mode = 0o644
    with contextlib.suppress(FileNotFoundError):
        mode = stat.S_IMODE(os.stat(path).st_mode) & ~0o022
    remove_stale_temporaries(path)
    prefix = f".{os.path.basename(path)}.{os.getpid()}."
    fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=TEMPORARY_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


TEMPORARY_SUFFIX = ".tap.tmp"
UNOWNED_STALE_AFTER = 600.0  # seconds: a temporary naming no writer is stale after this


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove what interrupted saves of `path` left beside it; return what was removed.

    A save writes `.<name>.<pid>.<random>.tap.tmp` and renames it over the tap; killed
    in between, it leaves the file forever (94 MB after 40 kills). One whose writer is no
    longer running is stale; one that names no writer (an older forkd's) is stale once it
    is ten minutes old. A save in progress in another process is never touched."""
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        if not (entry.startswith(".") and entry.endswith(TEMPORARY_SUFFIX)):
            continue
        full = os.path.join(directory, entry)
        if entry.startswith(f".{name}."):
            writer = entry[len(name) + 2 :].split(".", 1)[0]
            stale = writer.isdigit() and not _running(int(writer))
        else:
            try:
                stale = time.time() - os.lstat(full).st_mtime > UNOWNED_STALE_AFTER
            except OSError:
                continue
            stale = stale and entry.count(".") == 3  # `.<random>.tap.tmp`: a forkd save's
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(full)
                removed.append(full)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, alive
        return True
    return True


def check_trusted(path: str, st: os.stat_result) -> None:
    """Refuse a file someone else could have written: its pickle would run their code."""
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TapError(
            f"{path}: refusing to load a group- or world-writable tap file "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod go-w {path}"
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise TapError(
            f"{path}: refusing to load a tap file owned by uid {st.st_uid} "
            f"(loading it would run that user's code as uid {os.geteuid()})"
        )


# What no Application needs and every pickle exploit reaches for. Not a sandbox (the owner
# check above is the defence): a second line that turns the classic payloads, and a
# corrupted file that happens to name them, into a clear refusal instead of code run.
def beside(tap: str, suffix: str) -> str:
    """A file named after `tap`: `beside("app.tap", ".ctl")` is "app.ctl", and
    `beside("app.tap", "-known-good.tap")` the tagged save. Every such name is made here."""
    base = tap[: -len(".tap")] if tap.endswith(".tap") else tap
    return base + suffix


@runtime_checkable
class SavedApplication(Protocol):
    """What a tap file holds: a `forkd.app.Application`, checked by its shape so that this
    module (which `forkd.app` uses to save) does not import it back."""

    name: str
    ports: list[Any]
    tapfile: str | None

    def save(self, tag: str | None = None) -> str: ...


def _declared_packages(fields: list[bytes]) -> set[str]:
    for field in fields:
        if field.startswith(b"modules="):
            text = field[len(b"modules=") :].decode("ascii", "replace")
            return {name for name in text.split(",") if name}
    return set()


def loads(data: bytes, path: str = "<tap>") -> Any:
    """Unpickle an Application from tap bytes, with one-line errors for every failure."""
    newline = data.find(b"\n", 0, MAX_HEADER)
    if not data.startswith(MAGIC + b" ") or newline < 0:
        raise TapError(f"{path}: not a forkd tap file")
    fields = data[len(MAGIC) + 1 : newline].split()
    try:
        version = int(fields[0])
    except (IndexError, ValueError):
        raise TapError(f"{path}: not a forkd tap file (bad header)") from None
    if version > FORMAT:
        written_by = fields[1].decode(errors="replace") if len(fields) > 1 else "a newer forkd"
        raise TapError(
            f"{path}: tap format {version} is newer than this forkd understands "
            f"({FORMAT}); it was written by {written_by}"
        )
    try:
        declared = _declared_packages(fields[1:])
        application = TapUnpickler(io.BytesIO(data[newline + 1 :]), declared).load()
    except RefusedGlobal as error:
        raise TapError(f"{path}: refusing to load: {error} (a hostile or damaged tap?)") from None
    except (ModuleNotFoundError, ImportError) as error:
        raise TapError(f"{path}: a module it needs does not import: {error}") from error
    except AttributeError as error:
        raise TapError(f"{path}: a class it needs is gone: {error}") from error
    except (EOFError, pickle.UnpicklingError, ValueError, IndexError, KeyError) as error:
        raise TapError(f"{path}: truncated or corrupt tap file ({error})") from error
    except Exception as error:
        raise TapError(f"{path}: loading failed: {type(error).__name__}: {error}") from error
    if not isinstance(application, SavedApplication):
        raise TapError(f"{path}: holds a {type(application).__name__}, not an Application")
    return application


def load(path: str, trust_check: bool = True) -> Any:
    """Load the Application saved in `path`, refusing untrusted or broken files."""
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if trust_check:
                check_trusted(path, st)
            data = handle.read()
    except FileNotFoundError:
        raise TapError(f"{path}: no such tap file") from None
    except IsADirectoryError:
        raise TapError(f"{path}: is a directory, not a tap file") from None
    except PermissionError:
        raise TapError(f"{path}: permission denied") from None
    application = loads(data, path)
    application.tapfile = path
    application.disk_stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    return application
