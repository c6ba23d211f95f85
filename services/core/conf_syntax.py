"""Line syntax of Monolith-style ``.conf`` files (agent.conf): lexing, includes and scalar values.

This module knows nothing about which keys exist; it turns files into an ordered list of
:class:`ConfEntry` (key, raw value, file, line) and offers the value parsers (bool, int products,
``none``). :mod:`monolith_serving.core.agent_conf` maps entries onto typed fields.

Syntax:
- one ``key value`` per line; key and value are separated by whitespace and/or ``=``
  (Monolith's reader accepted both);
- ``#`` starts a comment anywhere on a line; blank lines are skipped;
- a key without a value is unset, like ``none`` (Monolith confs carry such lines, e.g. ``rough_sort_model_name``);
- a UTF-8 byte order mark at the start of a file is skipped;
- ``include <path>`` splices another file in place; a relative path is relative to the
  directory of the including file; include cycles are an error.

All functions are pure apart from reading the named files; nothing is cached.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from monolith_serving.core.errors import InvalidArgumentError

__all__ = [
    "ConfEntry",
    "ConfError",
    "is_none",
    "parse_bool",
    "parse_conf_file",
    "parse_conf_text",
    "parse_float",
    "parse_int_product",
]

# Key, then a run of blanks and/or '=' (Monolith accepted `key value`, `key=value`, `key = value`).
_LINE = re.compile(r"(?P<key>[^\s=]+)(?:[\s=]+(?P<value>.*))?")
_INT_FACTOR = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_log = logging.getLogger(__name__)
_TRUE = frozenset({"true", "yes", "1", "t", "y"})
_FALSE = frozenset({"false", "no", "0", "f", "n"})


class ConfError(InvalidArgumentError):
    """A conf file cannot be read or holds a bad value; the message names key, file and line."""


@dataclass(frozen=True)
class ConfEntry:
    """One ``key value`` line, value stripped of comments and surrounding blanks."""

    key: str
    value: str
    file: str
    line: int

    @property
    def where(self) -> str:
        """``file:line`` for messages."""
        return f"{self.file}:{self.line}"

    def error(self, problem: str) -> ConfError:
        """A ConfError about this entry naming key, file and line."""
        return ConfError(f"{self.where}: key {self.key!r}: {problem}")


def parse_conf_file(path: str | Path) -> tuple[ConfEntry, ...]:
    """Read ``path`` and every file it includes, in order.

    Raises ConfError when a file is missing or unreadable, on an ``include`` without a path and on an
    include cycle.
    """
    return tuple(_read(Path(path), stack=()))


def parse_conf_text(text: str, *, file: str | Path) -> tuple[ConfEntry, ...]:
    """Parse conf ``text`` as if it were the file ``file`` (includes resolve relative to it)."""
    path = Path(file)
    return tuple(_lex(text, path, stack=(_identity(path),)))


def _identity(path: Path) -> Path:
    # resolve() follows symlinks, so a cycle through a link or a different spelling is still seen.
    return path.resolve()


def _read(path: Path, stack: tuple[Path, ...], including: ConfEntry | None = None) -> list[ConfEntry]:
    ident = _identity(path)
    if ident in stack:
        chain = " -> ".join(str(p) for p in (*stack, ident))
        problem = f"include cycle: {chain}"
        raise including.error(problem) if including else ConfError(f"{path}: {problem}")
    try:
        # utf-8-sig: editors on Windows start files with a BOM, which would otherwise become part of the first key.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot read conf file {str(path)!r}: {exc}"
        raise including.error(problem) if including else ConfError(problem) from exc
    return _lex(text, path, stack=(*stack, ident))


def _lex(text: str, path: Path, stack: tuple[Path, ...]) -> list[ConfEntry]:
    entries: list[ConfEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None:  # pragma: no cover - the pattern matches any non-blank line
            raise ConfError(f"{path}:{number}: cannot parse line {line!r}")
        entry = ConfEntry(match["key"], (match["value"] or "").strip(), str(path), number)
        if entry.key == "include":
            if not entry.value:
                raise entry.error("include needs a path")
            target = Path(entry.value)
            if not target.is_absolute():
                target = path.parent / target
            entries.extend(_read(target, stack, including=entry))
        else:
            if not entry.value:
                _log.debug("%s: key %r has no value: unset", entry.where, entry.key)
            entries.append(entry)
    return entries


def is_none(value: str) -> bool:
    """True for the literal ``none`` (any case) and for no value at all: both mean "unset" in a conf file."""
    return not value or value.lower() == "none"


def parse_bool(value: str) -> bool:
    """``true/false/yes/no/1/0/t/f/y/n``, case-insensitive; ValueError otherwise."""
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r} (use true/false/yes/no/1/0/t/f/y/n)")


def parse_int_product(value: str) -> int:
    """A decimal integer or a product of them (``60 * 1000 * 1000``); ValueError otherwise.

    Factors are parsed one by one, so no expression evaluator ever sees the input.
    """
    result = 1
    for factor in value.split("*"):
        token = factor.strip()
        if not _INT_FACTOR.fullmatch(token):
            raise ValueError(f"not an integer or product of integers: {value!r}")
        result *= int(token)
    return result


def parse_float(value: str) -> float:
    """A plain decimal number (no inf/nan, no products); ValueError otherwise."""
    token = value.strip()
    if not _FLOAT.fullmatch(token):
        raise ValueError(f"not a number: {value!r}")
    return float(token)
