"""Line syntax of Monolith-style ``.conf`` files (agent.conf): lexing, includes and scalar values.

This module knows nothing about which keys exist; it turns files into an ordered list of
:class:`ConfEntry` (key, raw value, file, line) and offers the value parsers (bool, numbers with
arithmetic, ``none``). :mod:`monolith_serving.core.agent_conf` maps entries onto typed fields.

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

import ast
import logging
import math
import operator
import re
from collections.abc import Callable
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
    "parse_int",
]

# Key, then a run of blanks and/or '=' (Monolith accepted `key value`, `key=value`, `key = value`).
_LINE = re.compile(r"(?P<key>[^\s=]+)(?:[\s=]+(?P<value>.*))?")
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


# Numeric values: Monolith reads every int and float key with ``int(eval(v))`` / ``float(eval(v))``, so its confs
# may hold ``60 * 1000 * 1000``, ``2**20``, ``1 << 20``, ``6e7`` or ``0x10``. We accept that arithmetic with Python's
# meaning (same precedence, same literals) but never evaluate code: the value is parsed into a syntax tree and only
# number literals and the operators below are computed; anything else (names, calls, strings, other operators) is an
# error. Sizes are capped so that no value can make start-up slow (``9 ** 9 ** 9``).
_MAX_NUMBER_CHARS = 200
_INT_LIMIT = 2**63  # every int an agent.conf key holds fits an int64
_MAX_EXPONENT = 64  # of ``**`` and ``<<``
_Number = int | float
_BINARY: dict[type[ast.operator], Callable[[_Number, _Number], _Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
}
_UNARY: dict[type[ast.unaryop], Callable[[_Number], _Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_OPERATOR_NAMES = "+, -, *, **, <<"
# Leading zeros of a decimal number ("007", "060 * 1000"): Python refuses them, our older parser took them as decimal.
_LEADING_ZEROS = re.compile(r"(?<![\w.])0+(?=[0-9])")


def _evaluate(node: ast.expr) -> _Number:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow | ast.LShift) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent or shift {right} is beyond {_MAX_EXPONENT}")
        try:
            result = _BINARY[type(node.op)](left, right)
        except (ArithmeticError, TypeError, ValueError) as exc:  # 2.0 << 1, 1 << -1, float overflow
            raise ValueError(str(exc)) from None
        if isinstance(result, complex):  # (-8) ** 0.5
            raise ValueError("the result is not a real number")
        return _checked(result)
    raise ValueError(f"only numbers, {_OPERATOR_NAMES} and parentheses are allowed")


def _checked(value: _Number) -> _Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the result is not finite")
    if isinstance(value, int) and abs(value) >= _INT_LIMIT:
        raise ValueError("the result is beyond 2**63")
    return value


def _parse_number(value: str) -> _Number:
    text = value.strip()
    if not text:
        raise ValueError("no number given")
    if len(text) > _MAX_NUMBER_CHARS:
        raise ValueError(f"longer than {_MAX_NUMBER_CHARS} characters: {value[:20]!r}...")
    try:
        tree = ast.parse(_LEADING_ZEROS.sub("", text), mode="eval")  # parses only; nothing is executed
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ValueError(f"not a number or arithmetic on numbers: {value!r}") from None
    try:
        return _evaluate(tree.body)
    except ValueError as exc:
        raise ValueError(f"not a number or arithmetic on numbers: {value!r}: {exc}") from None


def parse_int(value: str) -> int:
    """An integer, or arithmetic on numbers giving a whole number; ValueError otherwise.

    Literals as in Python: ``1000``, ``1_000``, ``0x10``, ``0o17``, ``0b101``, ``6e7``, ``1.5``; operators ``+ - * **
    <<`` and parentheses, e.g. ``60 * 1000 * 1000``, ``2**20``, ``1 << 20``. A result that is not whole (``2.5``) is an
    error where Monolith's ``int(eval(v))`` truncated it. Results must stay below 2**63 in magnitude.
    """
    number = _parse_number(value)
    if isinstance(number, int):
        return number
    if not number.is_integer():
        raise ValueError(f"not a whole number: {value!r} is {number!r}")
    if abs(number) >= _INT_LIMIT:
        raise ValueError(f"not a number or arithmetic on numbers: {value!r}: the result is beyond 2**63")
    return int(number)


def parse_float(value: str) -> float:
    """A number, or arithmetic on numbers (as :func:`parse_int`, e.g. ``1 * 10``, ``0.5``); ValueError otherwise.

    ``inf`` and ``nan`` are not numbers here, nor is a result too large for a double.
    """
    return float(_parse_number(value))
