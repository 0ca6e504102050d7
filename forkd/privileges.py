"""Dropping privileges after the ports are bound (`forkd start -u USER -g GROUP`).

The order matters: bind (ports below 1024 need root), open the log and pidfile, then drop
group first (setgid needs root) and user last.
"""

from __future__ import annotations

import grp
import os
import pwd


class PrivilegeError(Exception):
    """The user or group does not exist, or we may not switch to it."""


def resolve_user(user: str | int | None) -> int | None:
    if user is None or user == "":
        return None
    text = str(user)
    try:
        return int(text) if text.isdigit() else pwd.getpwnam(text).pw_uid
    except KeyError:
        raise PrivilegeError(f"no such user: {text}") from None


def resolve_group(group: str | int | None) -> int | None:
    if group is None or group == "":
        return None
    text = str(group)
    try:
        return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise PrivilegeError(f"no such group: {text}") from None


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
