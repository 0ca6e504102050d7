"""Dropping privileges after the ports are bound (`forkd start -u USER -g GROUP`).

The order matters: bind (ports below 1024 need root), open the log and pidfile, then drop
group first (setgid needs root) and user last.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable


class PrivilegeError(Exception):
    """The user or group does not exist, or we may not switch to it."""


def lookup_user(name: str) -> int:
    """A uid from a user name or a number; PrivilegeError names an unknown user."""
    return _lookup(name, "user", lambda text: pwd.getpwnam(text).pw_uid)


def lookup_group(name: str) -> int:
    """A gid from a group name or a number; PrivilegeError names an unknown group."""
    return _lookup(name, "group", lambda text: grp.getgrnam(text).gr_gid)


def _lookup(text: str, kind: str, by_name: Callable[[str], int]) -> int:
    try:
        return int(text) if text.isdigit() else by_name(text)
    except KeyError:
        raise PrivilegeError(f"no such {kind}: {text}") from None


def resolve_user(user: str | int | None) -> int | None:
    """`-u` or the tap's uid: None or empty keeps the current user."""
    if user is None or user == "":
        return None
    return lookup_user(str(user))


def resolve_group(group: str | int | None) -> int | None:
    """`-g` or the tap's gid: None or empty keeps the current group."""
    if group is None or group == "":
        return None
    return lookup_group(str(group))


def drop(uid: int | None, gid: int | None) -> None:
    """Become `uid`/`gid` (None = keep). With a uid and no gid, take the user's own group."""
    if uid is None and gid is None:
        return
    if uid is not None and gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = None
    try:
        if gid is not None and gid != os.getegid():
            if uid is not None:
                try:
                    name = pwd.getpwuid(uid).pw_name
                    os.initgroups(name, gid)
                except KeyError:
                    os.setgroups([gid])
            else:
                os.setgroups([gid])
            os.setgid(gid)
        if uid is not None and uid != os.geteuid():
            os.setuid(uid)
    except PermissionError as error:
        raise PrivilegeError(
            f"cannot switch to uid {uid} gid {gid}: {error.strerror} (run as root to use -u/-g)"
        ) from None
