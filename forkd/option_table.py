"""The options a `forkd.usage.Options` class declares, as one table the parser and the help use.

Declarations come from three places (`optStrings`/`optParameters`, `optFlags`, `opt_*`
methods) and accumulate over the class hierarchy; `OptionTable` turns them into one
`OptionSpec` per option, indexed by long and short name, and refuses a declaration that
cannot work (a short name given to two options, an `opt_` method with too many arguments)
when the class is first used rather than when a user happens to type the option.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class OptionSpec:
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


def normalize_name(name: str) -> str:
    """The spelling used for lookup, so that `--under_score` and `--under-score` agree."""
    return name.replace("_", "-")


def clean_doc(doc: str | None) -> str:
    """One paragraph of help text from a declaration or a (multi-line) docstring."""
    return " ".join((doc or "").split())


def _is_flag_method(method: Callable[..., Any], name: str) -> bool:
    """True for an opt_ handler that takes no value, False for one that takes one."""
    arity = len(inspect.signature(method).parameters)
    if arity > 1:
        raise TypeError(f"Invalid Option function for {name}: it takes {arity} arguments")
    return arity == 0


class OptionTable:
    """Every option of one Options instance, indexed by long and short name."""

    def __init__(self, options: object) -> None:
        self.by_long: dict[str, OptionSpec] = {}
        self.by_short: dict[str, OptionSpec] = {}
        declared: dict[str, OptionSpec] = {}
        cls = type(options)
        for entry in _accumulate(cls, "optStrings") + _accumulate(cls, "optParameters"):
            long, short, default, doc, coerce = _pad(entry, 5)
            if coerce is not None and not callable(coerce):
                raise TypeError(f"coerce for option {long!r} is not callable: {coerce!r}")
            declared[normalize_name(self._name(long))] = OptionSpec(
                long, long, short, True, clean_doc(doc), default, coerce or str
            )
        for entry in _accumulate(cls, "optFlags"):
            long, short, doc = _pad(entry, 3)
            declared[normalize_name(self._name(long))] = OptionSpec(
                long, long, short, False, clean_doc(doc), 0
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

    def _add_methods(self, options: object, declared: dict[str, OptionSpec]) -> None:
        """Turn opt_* methods into options, one per function however many aliases it has."""
        aliases: dict[Any, list[str]] = {}
        for attr in dir(type(options)):
            if attr.startswith("opt_") and len(attr) > 4:
                function = getattr(type(options), attr)
                if callable(function):
                    aliases.setdefault(function, []).append(attr[4:])
        for names in aliases.values():
            pretty = sorted({normalize_name(n) for n in names}, key=lambda n: (-len(n), n))
            longs = [n for n in pretty if len(n) > 1]
            shorts = [n for n in pretty if len(n) == 1]
            canonical = pretty[0]
            method = "opt_" + names[0]
            flag = _is_flag_method(getattr(options, method), canonical)
            base = next((declared[n] for n in pretty if n in declared), None)
            doc = clean_doc(getattr(type(options), method).__doc__)
            option = OptionSpec(
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

    def _add(self, option: OptionSpec, longs: Iterable[str], shorts: Iterable[str] = ()) -> None:
        for name in longs:
            self.by_long[normalize_name(name)] = option
        for letter in [*shorts, option.short] if option.short else shorts:
            self._claim_short(letter, option)

    def _claim_short(self, letter: str, option: OptionSpec) -> None:
        if len(letter) != 1 or letter == "-":
            raise ValueError(f"short option must be one character: {letter!r}")
        other = self.by_short.get(letter)
        if other is not None and other.key != option.key:
            raise ValueError(f"short option -{letter} is declared for {other.key} and {option.key}")
        self.by_short[letter] = option

    def options(self) -> list[OptionSpec]:
        """Each option once, in Twisted's help order (by short name, else long name)."""
        unique = {id(o): o for o in [*self.by_long.values(), *self.by_short.values()]}
        return sorted(unique.values(), key=lambda o: o.short or o.long or o.key)
