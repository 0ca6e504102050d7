"""The `--help` text of a `forkd.usage.Options`: Twisted's layout of aligned, wrapped columns.

Kept apart from the parser: this is presentation only, reading the `OptionSpec`s of an
`OptionTable` and never changing them.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

from forkd.option_table import OptionSpec, clean_doc


def help_body(
    description: str | None,
    options: list[OptionSpec],
    sub_commands: Sequence[Sequence[Any]],
    width: int | None = None,
) -> str:
    """The description (dedented), the `Options:` table and the `Commands:` table."""
    width = width or terminal_width()
    parts = []
    if description:
        parts.append("\n" + textwrap.dedent(description).strip("\n") + "\n")
    rows = [(_option_column(o), _option_doc(o)) for o in options]
    parts.append("Options:\n" + format_table(rows, width) if rows else "Options: None\n")
    if sub_commands:
        commands = [(f"    {c[0]}  ", clean_doc(c[3])) for c in sub_commands]
        parts.append("Commands:\n" + format_table(commands, width))
    return "\n".join(parts)


def terminal_width() -> int:
    """$COLUMNS as Twisted reads it, but a junk value falls back to 80 instead of crashing."""
    try:
        return max(40, int(os.environ.get("COLUMNS", "80")))
    except ValueError:
        return 80


def _option_column(option: OptionSpec) -> str:
    short = f"-{option.short}," if option.short and option.long else ""
    if not option.long:
        short = f"-{option.short} " if not option.takes_value else f"-{option.short} VALUE"
        return f"  {short}"
    return f"  {short:3} --{option.long}{'=' if option.takes_value else ''}"


def _option_doc(option: OptionSpec) -> str:
    doc = option.doc
    if option.takes_value and option.stored and option.default is not None:
        doc = f"{doc} [default: {option.default}]".strip()
    coerce_doc = getattr(option.coerce, "coerceDoc", "") if option.method is None else ""
    if option.takes_value and coerce_doc:
        doc = f"{doc}. {coerce_doc}" if doc else coerce_doc
    return doc


def format_table(rows: list[tuple[str, str]], width: int) -> str:
    """Two aligned columns, the second wrapped to `width`, one trailing newline per line."""
    column = max(len(left) for left, _ in rows) + 2
    lines = []
    for left, doc in rows:
        wrapped = textwrap.wrap(doc, max(20, width - column)) or [""]
        lines.append(f"{left:{column}}{wrapped[0]}".rstrip())
        lines.extend(" " * column + more for more in wrapped[1:])
    return "\n".join(lines) + "\n"
