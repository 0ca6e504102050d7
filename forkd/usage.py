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
"""

from __future__ import annotations

import inspect
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

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


portCoerce.coerceDoc = "Must be an int between 0 and 65535."  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Option:
    """One option as the parser and the help table see it, whatever declared it."""

    key: str  # the dict key the value is stored under (or the handler's canonical name)
    long: str | None  # the long name as shown in help and error messages
    short: str | None
    takes_value: bool
    doc: str
    default: Any = None
    coerce: Callable[[str], Any] | None = None
    method: str | None = None  # the opt_* attribute that handles it, if any
    stored: bool = True  # declared in a list, so it has a dict entry from the start


def _pad(entry: Sequence[Any], size: int) -> list[Any]:
    """Pad a declaration to `size` fields with None, as Twisted's util.padTo does."""
    fields = list(entry)
    if len(fields) > size:
        raise ValueError(f"option declaration has too many fields: {entry!r}")
    return fields + [None] * (size - len(fields))


def _accumulate(cls: type, name: str) -> list[Any]:
    """Concatenate a list attribute over the MRO, bases first, as Twisted does."""
    found: list[Any] = []
    for klass in reversed(cls.__mro__):
        found.extend(klass.__dict__.get(name, ()))
    return found


def _normalize(name: str) -> str:
    """The spelling used for lookup, so that `--under_score` and `--under-score` agree."""
    return name.replace("_", "-")


def _printable(text: str) -> str:
    """User text as it goes into an error message, kept to one line a terminal can show."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _clean_doc(doc: str | None) -> str:
    """One paragraph of help text from a declaration or a (multi-line) docstring."""
    return " ".join((doc or "").split())


def _is_flag_method(method: Callable[..., Any], name: str) -> bool:
    """True for an opt_ handler that takes no value, False for one that takes one."""
    arity = len(inspect.signature(method).parameters)
    if arity > 1:
        raise TypeError(f"Invalid Option function for {name}: it takes {arity} arguments")
    return arity == 0


class _OptionTable:
    """Every option of one Options instance, indexed by long and short name."""

    def __init__(self, options: Options) -> None:
        self.by_long: dict[str, _Option] = {}
        self.by_short: dict[str, _Option] = {}
        declared: dict[str, _Option] = {}
        cls = type(options)
        for entry in _accumulate(cls, "optStrings") + _accumulate(cls, "optParameters"):
            long, short, default, doc, coerce = _pad(entry, 5)
            if coerce is not None and not callable(coerce):
                raise TypeError(f"coerce for option {long!r} is not callable: {coerce!r}")
            declared[_normalize(self._name(long))] = _Option(
                long, long, short, True, _clean_doc(doc), default, coerce or str
            )
        for entry in _accumulate(cls, "optFlags"):
            long, short, doc = _pad(entry, 3)
            declared[_normalize(self._name(long))] = _Option(
                long, long, short, False, _clean_doc(doc), 0
            )
        for option in declared.values():
            self._add(option, [option.long or option.key])
        self._add_methods(options, declared)
        help_option = self.by_long.get("help")
        if "h" not in self.by_short and help_option is not None and not help_option.short:
            # `-h` too, unless the class gave the letter to another option (`--host`)
            with_h = replace(help_option, short="h")
            for index in (self.by_long, self.by_short):
                index.update({n: with_h for n, o in index.items() if o is help_option})
            self.by_short["h"] = with_h

    @staticmethod
    def _name(long: Any) -> str:
        if not isinstance(long, str) or not long:
            raise ValueError("An option cannot be without a name.")
        return long

    def _add_methods(self, options: Options, declared: dict[str, _Option]) -> None:
        """Turn opt_* methods into options, one per function however many aliases it has."""
        aliases: dict[Any, list[str]] = {}
        for attr in dir(type(options)):
            if attr.startswith("opt_") and len(attr) > 4:
                function = getattr(type(options), attr)
                if callable(function):
                    aliases.setdefault(function, []).append(attr[4:])
        for names in aliases.values():
            pretty = sorted({_normalize(n) for n in names}, key=lambda n: (-len(n), n))
            longs = [n for n in pretty if len(n) > 1]
            shorts = [n for n in pretty if len(n) == 1]
            canonical = pretty[0]
            method = "opt_" + names[0]
            flag = _is_flag_method(getattr(options, method), canonical)
            base = next((declared[n] for n in pretty if n in declared), None)
            doc = _clean_doc(getattr(type(options), method).__doc__)
            option = _Option(
                key=base.key if base else canonical,
                long=(base.long if base else None) or (longs[0] if longs else None),
                short=(base.short if base else None) or (shorts[0] if shorts else None),
                takes_value=not flag,
                doc=doc or (base.doc if base else ""),
                default=base.default if base else None,
                method=method,
                stored=base is not None,
            )
            self._add(option, longs, shorts)

    def _add(self, option: _Option, longs: Iterable[str], shorts: Iterable[str] = ()) -> None:
        for name in longs:
            self.by_long[_normalize(name)] = option
        for letter in [*shorts, option.short] if option.short else shorts:
            self._claim_short(letter, option)

    def _claim_short(self, letter: str, option: _Option) -> None:
        if len(letter) != 1 or letter == "-":
            raise ValueError(f"short option must be one character: {letter!r}")
        other = self.by_short.get(letter)
        if other is not None and other.key != option.key:
            raise ValueError(f"short option -{letter} is declared for {other.key} and {option.key}")
        self.by_short[letter] = option

    def options(self) -> list[_Option]:
        """Each option once, in Twisted's help order (by short name, else long name)."""
        unique = {id(o): o for o in [*self.by_long.values(), *self.by_short.values()]}
        return sorted(unique.values(), key=lambda o: o.short or o.long or o.key)

    def match_long(self, name: str) -> _Option:
        """The option `--name` means: an exact name or getopt's unique prefix."""
        wanted = _normalize(name)
        if wanted in self.by_long:
            return self.by_long[wanted]
        found = {id(o): o for n, o in self.by_long.items() if wanted and n.startswith(wanted)}
        if not found:
            raise UsageError(f"option --{_printable(name)} not recognized")
        if len(found) > 1:
            raise UsageError(f"option --{_printable(name)} not a unique prefix")
        return next(iter(found.values()))


_Parsed = list[tuple[_Option, Any]]


def _split_argv(table: _OptionTable, argv: list[str]) -> tuple[_Parsed, list[str]]:
    """getopt: the (option, value) pairs in order, and the arguments after the options."""
    found: _Parsed = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return found, argv[i + 1 :]
        if arg.startswith("--"):
            name, equals, value = arg[2:].partition("=")
            option = table.match_long(name)
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
    _table: _OptionTable

    # A dict subclass is unhashable; an Options is an object with identity (Twisted too).
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        table = _OptionTable(self)
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
        object.__setattr__(self, "_table", _OptionTable(self))

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

    def _dispatch(self, option: _Option, value: Any) -> None:
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
        width = width or _terminal_width()
        parts = []
        description = self.usage_message or self.longdesc
        if description:
            parts.append("\n" + textwrap.dedent(description).strip("\n") + "\n")
        rows = [(_option_column(o), _option_doc(o)) for o in self._table.options()]
        parts.append("Options:\n" + _table(rows, width) if rows else "Options: None\n")
        if self.subCommands:
            commands = [(f"    {c[0]}  ", _clean_doc(c[3])) for c in self.subCommands]
            parts.append("Commands:\n" + _table(commands, width))
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.getSynopsis() + "\n" + self.getUsage()


def _terminal_width() -> int:
    """$COLUMNS as Twisted reads it, but a junk value falls back to 80 instead of crashing."""
    try:
        return max(40, int(os.environ.get("COLUMNS", "80")))
    except ValueError:
        return 80


def _option_column(option: _Option) -> str:
    short = f"-{option.short}," if option.short and option.long else ""
    if not option.long:
        short = f"-{option.short} " if not option.takes_value else f"-{option.short} VALUE"
        return f"  {short}"
    return f"  {short:3} --{option.long}{'=' if option.takes_value else ''}"


def _option_doc(option: _Option) -> str:
    doc = option.doc
    if option.takes_value and option.stored and option.default is not None:
        doc = f"{doc} [default: {option.default}]".strip()
    coerce_doc = getattr(option.coerce, "coerceDoc", "") if option.method is None else ""
    if option.takes_value and coerce_doc:
        doc = f"{doc}. {coerce_doc}" if doc else coerce_doc
    return doc


def _table(rows: list[tuple[str, str]], width: int) -> str:
    """Two aligned columns, the second wrapped to `width`, one trailing newline per line."""
    column = max(len(left) for left, _ in rows) + 2
    lines = []
    for left, doc in rows:
        wrapped = textwrap.wrap(doc, max(20, width - column)) or [""]
        lines.append(f"{left:{column}}{wrapped[0]}".rstrip())
        lines.extend(" " * column + more for more in wrapped[1:])
    return "\n".join(lines) + "\n"
