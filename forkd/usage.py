"""Command-line options for tap modules and forkd's own commands: `Options` and `UsageError`.

A tap module's `Options` is the seed's ("Writing Option Class") and Twisted's
`twisted.python.usage.Options`: one declarative class from which parsing, defaults and the
`--help` text all come, so an option is never written twice. Declarations:

- `optStrings` (seed) and `optParameters`: `[long, short, default, doc, coerce]`, padded with
  None; the value given on the command line (coerced) or the default.
- `optFlags`: `[long, short, doc]`; 1 when given, else 0 (ints, as in the seed and Twisted).
- `opt_<name>` methods: taking no argument they are flags called once per occurrence, taking
  one they receive the value; one-letter names are short options (`opt_v` is `-v`); an alias
  (`opt_x = opt_extra`) is a synonym; the docstring is the help text.
- `subCommands`: `[name, shortcut, OptionsClass, doc]`; the first non-option argument picks
  one, which parses the rest (`self.subCommand`, `self.subOptions`); `defaultSubCommand`.

Declarations accumulate over the class hierarchy (a subclass adds to its bases' lists).
Parsing is getopt's: `--long=value`, `--long value`, a unique prefix of a long name,
`-p value`, `-pvalue`, `-abc`, `--` ends options, and the first non-option argument ends
them too (that is what lets a sub-command own the rest of the line). `_` and `-` are the
same character in long names. Every error a user can cause is a `UsageError` whose text is
getopt's or Twisted's, so forkd's CLIs print one line and exit non-zero.

Values are dict items (`config["port"]`, the pickled form stored in tap files) and, for the
seed's code, attributes (`config.port`; `config.torture_device` for `torture-device`).

The declarations become one table in `forkd.option_table`; the `--help` layout is
`forkd.usage_help`; this module is the parser and the `Options` API.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from forkd.option_table import OptionSpec, OptionTable, normalize_name
from forkd.usage_help import help_body

__all__ = ["Options", "UsageError", "error", "portCoerce"]


class UsageError(Exception):
    """A command line the user got wrong; the message is one line meant for them."""


error = UsageError  # Twisted's historical name


def portCoerce(value: str) -> int:
    """Coerce a TCP/UDP port number, so a typo fails at parse time rather than at bind."""
    port = int(value)
    if port < 0 or port > 65535:
        raise ValueError(f"Port number not in range: {port}")
    return port


portCoerce.__dict__["coerceDoc"] = "Must be an int between 0 and 65535."  # help text


def _printable(text: str) -> str:
    """User text as it goes into an error message, kept to one line a terminal can show."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


_Parsed = list[tuple[OptionSpec, Any]]


def _match_long(table: OptionTable, name: str) -> OptionSpec:
    """The option `--name` means: an exact name or getopt's unique prefix."""
    wanted = normalize_name(name)
    if wanted in table.by_long:
        return table.by_long[wanted]
    found = {id(o): o for n, o in table.by_long.items() if wanted and n.startswith(wanted)}
    if not found:
        raise UsageError(f"option --{_printable(name)} not recognized")
    if len(found) > 1:
        raise UsageError(f"option --{_printable(name)} not a unique prefix")
    return next(iter(found.values()))


def _split_argv(table: OptionTable, argv: list[str]) -> tuple[_Parsed, list[str]]:
    """getopt: the (option, value) pairs in order, and the arguments after the options."""
    found: _Parsed = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return found, argv[i + 1 :]
        if arg.startswith("--"):
            name, equals, value = arg[2:].partition("=")
            option = _match_long(table, name)
            shown = option.long or name
            if option.takes_value and not equals:
                if i + 1 >= len(argv):
                    raise UsageError(f"option --{shown} requires argument")
                i += 1
                value = argv[i]
            elif not option.takes_value and equals:
                raise UsageError(f"option --{shown} must not have an argument")
            found.append((option, value if option.takes_value else None))
        elif arg.startswith("-") and arg != "-":
            letters = arg[1:]
            for j, letter in enumerate(letters):
                short = table.by_short.get(letter)
                if short is None:
                    raise UsageError(f"option -{_printable(letter)} not recognized")
                if not short.takes_value:
                    found.append((short, None))
                    continue
                value = letters[j + 1 :]
                if not value:
                    if i + 1 >= len(argv):
                        raise UsageError(f"option -{letter} requires argument")
                    i += 1
                    value = argv[i]
                found.append((short, value))
                break
        else:
            return found, argv[i:]
        i += 1
    return found, []


class Options(dict[str, Any]):
    """An option parser whose result is itself: a dict of option values, also attributes.

    Subclass it and declare options (see the module docstring). `parseOptions(argv)` fills
    it in; `postOptions()` and `parseArgs(*args)` are the hooks for checking the whole and
    taking positional arguments. `str(options)` is the `--help` text. Instances pickle, since
    tap files may hold them: only values and a few attributes are stored, the option table
    is rebuilt from the class.
    """

    synopsis: str | None = None
    longdesc: str | None = None
    usage_message: str | None = None
    subCommands: Sequence[Sequence[Any]] = ()
    defaultSubCommand: str | None = None
    parent: Options | None = None
    subCommand: str | None = None
    defaults: dict[str, Any]
    _table: OptionTable

    # A dict subclass is unhashable; an Options is an object with identity (Twisted too).
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        table = OptionTable(self)
        object.__setattr__(self, "_table", table)
        defaults = {o.key: o.default for o in table.options() if o.stored}
        object.__setattr__(self, "defaults", defaults)
        self.update(defaults)

    @property
    def opts(self) -> Options:
        """Twisted's name for the values, which are this object itself."""
        return self

    # -- values as attributes -------------------------------------------------------------

    def _key_for(self, name: str) -> str | None:
        for key in (name, name.replace("_", "-")):
            if dict.__contains__(self, key):
                return key
        return None

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails, so methods and real attributes win; runs
        # before __setstate__ while unpickling, hence nothing but dict methods here.
        if not name.startswith("__"):
            key = self._key_for(name)
            if key is not None:
                return dict.__getitem__(self, key)
        raise AttributeError(f"{type(self).__name__!r} object has no option or attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # `self.port = 80` in an opt_ method must change what config["port"] reads.
        key = None if name.startswith("_") or hasattr(type(self), name) else self._key_for(name)
        if key is None:
            object.__setattr__(self, name, value)
        else:
            self[key] = value

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_table", None)  # holds bound methods; rebuilt from the class on load
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_table", OptionTable(self))

    # -- parsing --------------------------------------------------------------------------

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse `options` (default `sys.argv[1:]`), call the hooks; UsageError if wrong."""
        argv = list(sys.argv[1:] if options is None else options)
        found, args = _split_argv(self._table, argv)
        for option, value in found:  # all of it parsed before any handler runs, as getopt
            self._dispatch(option, value)
        if self.subCommands and (args or self.defaultSubCommand is not None):
            self._parse_sub_command(args or [self.defaultSubCommand])
        else:
            try:
                inspect.signature(self.parseArgs).bind(*args)
            except TypeError:
                raise UsageError("Wrong number of arguments.") from None
            self.parseArgs(*args)
        self.postOptions()

    def _dispatch(self, option: OptionSpec, value: Any) -> None:
        if option.method is not None:
            handler = getattr(self, option.method)
            if option.takes_value:
                handler(value)
            else:
                handler()
        elif option.takes_value:
            assert option.coerce is not None
            try:
                self[option.key] = option.coerce(value)
            except ValueError as e:
                raise UsageError(
                    f"Parameter type enforcement failed: {_printable(str(e))}"
                ) from None
        else:
            self[option.key] = 1

    def _parse_sub_command(self, args: list[Any]) -> None:
        name, rest = args[0], args[1:]
        for command, shortcut, parser, _doc in self.subCommands:
            if name in (command, shortcut):
                sub = parser()
                object.__setattr__(self, "subCommand", command)
                object.__setattr__(self, "subOptions", sub)
                object.__setattr__(sub, "parent", self)
                sub.parseOptions(rest)
                return
        raise UsageError(f"Unknown command: {_printable(str(name))}")

    def postOptions(self) -> None:
        """Override to check or derive values once every option has been seen."""

    def parseArgs(self) -> None:
        """Override to take positional arguments; the default accepts none at all."""

    def opt_help(self) -> NoReturn:
        """Display this help and exit."""
        text = str(self)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        sys.exit(0)

    # -- help -----------------------------------------------------------------------------

    def getSynopsis(self) -> str:
        """The `Usage: ...` line; a sub-command's starts with its parent's."""
        parent = self.parent
        if parent is None:
            program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "forkd"
            return (self.synopsis or f"Usage: {program} [options]").rstrip()
        own = (self.synopsis or "[options]").rstrip()
        return f"{parent.getSynopsis()} {parent.subCommand} {own}"

    def getUsage(self, width: int | None = None) -> str:
        """The help body: the description (`usage_message`/`longdesc`), options, commands."""
        sub = self.__dict__.get("subOptions")
        if sub is not None:  # a parse error inside the sub-command: its help is the useful one
            return str(sub.getUsage(width))
        return help_body(
            self.usage_message or self.longdesc, self._table.options(), self.subCommands, width
        )

    def __str__(self) -> str:
        return self.getSynopsis() + "\n" + self.getUsage()
