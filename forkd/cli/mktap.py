"""mktap: build a .tap file (a pickled Application) from a tap module and its options.

    mktap [-u USER] [-g GROUP] [-o FILE] NAME [tap options]   writes NAME.tap
    mktap --append FILE NAME [tap options]                    adds NAME's ports to FILE
    mktap --list                                              the known tap modules
    mktap NAME --help                                         NAME's usage_message and options

Exit codes: 0 done, 2 bad usage (the tap's usage, then one `Usage Error:` line), 1 any other
failure (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import NoReturn

from forkd import taps
from forkd.app import Application
from forkd.cli import add_version, quiet_on_closed_pipe
from forkd.supervisor import privileges
from forkd.tapfile import MAGIC, TapError
from forkd.tapfile import load as load_tap
from forkd.usage import UsageError

EXIT_FAILURE = 1
EXIT_USAGE = 2


class Failure(Exception):
    """A failure to report as one line and exit 1."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mktap",
        description="Write a .tap file (a pickled forkd Application) from a tap module.",
        epilog="Run 'mktap NAME --help' for the options of tap module NAME.",
    )
    add_version(p)
    p.add_argument("--list", action="store_true", help="list the known tap modules and exit")
    p.add_argument("-a", "--append", metavar="FILE", help="add the ports to an existing tap file")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of NAME.tap")
    p.add_argument("-u", "--uid", metavar="USER", help="user (name or uid) to run as")
    p.add_argument("-g", "--gid", metavar="GROUP", help="group (name or gid) to run as")
    p.add_argument("name", nargs="?", help="the tap module (mktap --list)")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the tap module's own options")
    return p


def resolve_ids(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """`-u`/`-g` as ids (names looked up as `forkd start` does); unknown ones are a Failure."""
    try:
        uid = None if user is None else privileges.lookup_user(user)
        gid = None if group is None else privileges.lookup_group(group)
    except privileges.PrivilegeError as error:
        raise Failure(str(error)) from None
    return uid, gid


def list_taps() -> None:
    rows = taps.available()
    width = max((len(name) for name, _ in rows), default=0)
    for name, summary in rows:
        print(f"{name:<{width}}  {summary}".rstrip())


def refuse_read_only(path: str) -> None:
    """A tap its owner made read-only is not rewritten: the atomic rename would replace it
    anyway (only the directory's mode counts for a rename), silently undoing that choice."""
    mode = os.stat(path).st_mode
    if not mode & stat.S_IWUSR:
        raise Failure(
            f"{os.path.abspath(path)}: the tap file is read-only (mode {stat.S_IMODE(mode):o}); "
            f"run chmod u+w {path} to change it"
        )


def refuse_overwriting_other_file(path: str) -> None:
    """`mktap -o notes.txt echo` must not replace a file that is not a tap: that loses data."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(MAGIC))
    except (FileNotFoundError, IsADirectoryError):  # the save says "is a directory"
        return
    except OSError as error:
        raise Failure(f"cannot write {path}: {error.strerror or error}") from None
    if start and start != MAGIC:  # an empty file holds nothing to lose
        raise Failure(f"{os.path.abspath(path)} exists and is not a tap file; not overwriting it")


def usage_error(name: str, error: Exception) -> NoReturn:
    """One line, then the hint; the whole option table is one `--help` away, not in the way."""
    print(f"mktap: {name}: {error} (mktap {name} --help lists its options)", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def make(args: argparse.Namespace) -> str:
    """Build or extend the application; return the path written."""
    synopsis = f"Usage: mktap [mktap options] {args.name} [{args.name} options]"
    try:
        module = taps.load(args.name)
        config = taps.make_options(module, args.name, synopsis)
    except (taps.TapNotFound, taps.BadTap) as error:
        raise Failure(str(error)) from None
    try:
        config.parseOptions(args.options)
    except UsageError as error:
        usage_error(args.name, error)

    if args.append:
        try:
            application = load_tap(args.append)
        except TapError as error:
            raise Failure(str(error)) from None
        path = args.append
        refuse_read_only(path)
    else:
        application = Application(args.name)
        path = args.output or f"{args.name}.tap"
        refuse_overwriting_other_file(path)
    uid, gid = resolve_ids(args.uid, args.gid)
    if uid is not None:
        application.uid = uid
    if gid is not None:
        application.gid = gid

    try:
        taps.apply(module, application, config)
    except UsageError as error:
        usage_error(args.name, error)
    except (taps.BadTap, ValueError) as error:  # e.g. the port is already in the tap
        raise Failure(str(error)) from None
    application.tapfile = os.path.abspath(path)
    try:
        written: str = application.save()
    except TapError as error:  # an attribute that does not pickle: named in the message
        raise Failure(str(error)) from None
    except OSError as error:
        raise Failure(f"cannot write {path}: {error.strerror or error}") from None
    return written


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    taps.importable_here()
    try:
        if args.list:
            list_taps()
            return 0
        if not args.name:
            parser().print_usage(sys.stderr)
            print("mktap: error: name a tap module (mktap --list shows them)", file=sys.stderr)
            return EXIT_USAGE
        path = make(args)
    except Failure as error:
        print(f"mktap: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # a tap module's own bug: one line, still no traceback
        print(f"mktap: {args.name}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"mktap: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
