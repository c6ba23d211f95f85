"""``layout_filters``: which layout items a unified (v3) container loads, with Monolith's semantics.

A filter is ``"<match>; <condition>"``, e.g. ``ps_{i}; i % 2 == 1``. As in Monolith's ``agent_v3.py``
(``AgentV3.__init__`` / ``layout_update_callback``, ``utils.normalize_regex``):

- ``${shard_id}`` and ``${shard_num}`` are replaced by this container's values in the whole text first.
- ``<match>`` is a Python regular expression in which ``{name}`` becomes ``(?P<name>\\d+)``. It is
  matched with ``re.match`` against the item's sub_graph: anchored at the start only, so ``ps_1`` also
  accepts ``ps_10`` (end it with ``$`` for an exact name). Braces that are not ``{name}`` stay regex
  quantifiers (``\\d{2}``); any other brace text is refused.
- ``<condition>`` is a Python expression over the captured names (integers), which Monolith ``eval``-uates.

Our extensions, each used only where Monolith would match nothing or crash, so a filter Monolith accepts
behaves the same here: a match containing a literal ``:`` is matched against ``model:sub_graph``
(sub_graph names never contain ``:``); a bare ``*`` accepts everything and a trailing ``:*`` every
sub_graph of that model (both kept from this module's first, glob-style syntax); a filter without
``;`` or with an empty condition accepts whatever its match accepts.

Conditions are never passed to ``eval``: they are parsed with :mod:`ast`, checked against a whitelist when the
filter is built, tried once with every capture 0 (so ``i in 3`` is refused at start-up), and evaluated by
walking the tree. Allowed: int/float/bool constants, the captured names, tuple/list/set literals,
``+ - * / // % **`` (exponent: an integer constant 0..64), ``& | ^ ~``, unary ``- + not``, comparisons
(chains, ``in`` / ``not in``), ``and or``, ``x if c else y``, and the calls ``range``, ``abs``, ``min`` and
``max`` (the last two with at least two arguments, never over an iterable). Anything else, an unknown
name, or nesting deeper than ``MAX_CONDITION_DEPTH`` is refused (LayoutFilterError quoting the filter,
and the agent exits 2). A condition that fails for one item (division by zero, a huge number) does not
accept it. An item is accepted when any filter accepts it; no filters accept everything. Pure and
thread-safe.
"""

from __future__ import annotations

import ast
import logging
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monolith_serving.core.errors import InvalidArgumentError

__all__ = ["LayoutFilter", "LayoutFilterError", "LayoutFilterSet", "substitute_shard"]

log = logging.getLogger(__name__)

_SHARD_VAR = re.compile(r"\$\{(shard_id|shard_num)\}")
_BRACES = re.compile(r"\{([^{}]*)\}")
_CAPTURE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUANTIFIER = re.compile(r"[0-9]*(,[0-9]*)?")
# Group openers that contain a ':' without it being matched text: (?:...), (?i:...), (?-i:...).
_GROUP_OPENER = re.compile(r"\(\?[aiLmsux-]*:")

_BIN_OPS: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY_OPS: Mapping[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
}
_COMPARE_OPS: Mapping[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
# name -> (function, fewest positional arguments, most)
_CALLS: Mapping[str, tuple[Callable[..., Any], int, int]] = {
    "range": (range, 1, 3),
    "abs": (abs, 1, 1),
    "min": (min, 2, 64),
    "max": (max, 2, 64),
}
_COLLECTIONS: Mapping[type[ast.expr], Callable[[list[Any]], Any]] = {ast.Tuple: tuple, ast.List: list, ast.Set: set}

# Checking and evaluating a condition recurse once per nesting level; far deeper than any real filter needs,
# and far within Python's recursion limit (which a deeper one would hit: an uncaught RecursionError).
MAX_CONDITION_DEPTH = 200
MAX_EXPONENT = 64
MAX_POWER_BITS = 1 << 16  # a larger ** result is an error (not accepted), not minutes of arithmetic


class LayoutFilterError(InvalidArgumentError):
    """A layout filter does not parse; the message quotes the filter."""


class _ConditionFailed(Exception):
    """A condition could not be computed for one item (e.g. a power too large)."""


def substitute_shard(text: str, *, shard_id: int, shard_num: int) -> str:
    """Replace ``${shard_id}`` and ``${shard_num}`` (also used for ``layout_pattern``)."""
    values = {"shard_id": shard_id, "shard_num": shard_num}
    return _SHARD_VAR.sub(lambda m: str(values[m.group(1)]), text)


def _compile_match(match: str, source: str) -> re.Pattern[str]:
    """Monolith's ``normalize_regex`` (``{name}`` -> ``(?P<name>\\d+)``), then ``re.compile``."""
    if match == "*":
        match = ""  # matches every item's start
    elif match.endswith(":*"):
        match = match[:-1]  # "m:*": every sub_graph of m

    def replace(brace: re.Match[str]) -> str:
        inner = brace.group(1)
        if _CAPTURE_NAME.fullmatch(inner):
            return f"(?P<{inner}>\\d+)"
        if inner and _QUANTIFIER.fullmatch(inner) and inner != ",":
            return brace.group(0)  # a regex quantifier such as {2} or {1,3}
        raise LayoutFilterError(f"layout filter {source!r}: bad capture {brace.group(0)!r} in {match!r} (use {{name}})")

    try:
        return re.compile(_BRACES.sub(replace, match))
    except re.error as exc:
        raise LayoutFilterError(f"layout filter {source!r}: {match!r} is not a regular expression: {exc}") from None
    except RecursionError:
        raise LayoutFilterError(f"layout filter {source!r}: {match!r} nests too deeply") from None


def _depth(tree: ast.AST) -> int:
    """Nesting depth of ``tree``, measured without recursion (the tree may be too deep to recurse into)."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _parse_condition(text: str, source: str) -> ast.Expression:
    try:
        condition = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise LayoutFilterError(f"layout filter {source!r}: condition does not parse: {exc.msg}") from None
    except RecursionError:  # the parser itself gave up on the nesting
        raise LayoutFilterError(f"layout filter {source!r}: condition nests too deeply to parse") from None
    if _depth(condition) > MAX_CONDITION_DEPTH:
        raise LayoutFilterError(f"layout filter {source!r}: condition nests deeper than {MAX_CONDITION_DEPTH} levels")
    return condition


def _check_node(node: ast.AST, names: frozenset[str], source: str) -> None:
    """Reject every node outside the whitelist (so evaluation needs no further checks)."""

    def fail(problem: str) -> LayoutFilterError:
        return LayoutFilterError(f"layout filter {source!r}: {problem}")

    def check(child: ast.AST) -> None:
        _check_node(child, names, source)

    if isinstance(node, ast.Expression):
        check(node.body)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            check(value)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        check(node.operand)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        if isinstance(node.op, ast.Pow) and not (
            isinstance(node.right, ast.Constant)
            and type(node.right.value) is int
            and 0 <= node.right.value <= MAX_EXPONENT
        ):
            raise fail(f"the exponent of ** must be an integer constant 0..{MAX_EXPONENT}")
        check(node.left)
        check(node.right)
    elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE_OPS for op in node.ops):
        check(node.left)
        for comparator in node.comparators:
            check(comparator)
    elif isinstance(node, ast.IfExp):
        for child in (node.test, node.body, node.orelse):
            check(child)
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for element in node.elts:
            check(element)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name is None or name not in _CALLS or name in names or node.keywords:
            raise fail(f"only calls of {', '.join(sorted(_CALLS))} (positional arguments) are allowed")
        _, fewest, most = _CALLS[name]
        if not fewest <= len(node.args) <= most:
            raise fail(f"{name}() takes {fewest}..{most} arguments here, got {len(node.args)}")
        for arg in node.args:
            check(arg)
    elif isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise fail(f"unknown name {node.id!r} (captures: {known})")
    elif isinstance(node, ast.Constant):
        if type(node.value) not in (int, float, bool):
            raise fail(f"only number and boolean constants, got {node.value!r}")
    else:
        raise fail(f"{type(node).__name__} is not allowed in a condition")


def _power(base: Any, exponent: int) -> Any:
    if isinstance(base, int) and abs(base).bit_length() * exponent > MAX_POWER_BITS:
        raise _ConditionFailed(f"{exponent}th power of a {abs(base).bit_length()}-bit number is too large")
    return base**exponent


def _number(value: Any) -> Any:
    """Arithmetic takes numbers only (``(0,) * 10**9`` would build a huge tuple)."""
    if not isinstance(value, int | float):
        raise TypeError(f"arithmetic on {type(value).__name__} {value!r:.50}")
    return value


def _evaluate(node: ast.AST, env: Mapping[str, int]) -> Any:
    """Walk a tree already checked by _check_node, with Python's semantics (short-circuits included)."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.BoolOp):
        value: Any = None
        for operand in node.values:
            value = _evaluate(operand, env)
            if bool(value) is isinstance(node.op, ast.Or):
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not operand
        return _UNARY_OPS[type(node.op)](_number(operand))
    if isinstance(node, ast.BinOp):
        left, right = _number(_evaluate(node.left, env)), _number(_evaluate(node.right, env))
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        return _BIN_OPS[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, env)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, env)
            if not _COMPARE_OPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _evaluate(node.body if _evaluate(node.test, env) else node.orelse, env)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return _COLLECTIONS[type(node)]([_evaluate(e, env) for e in node.elts])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        function = _CALLS[node.func.id][0]
        return function(*(_evaluate(arg, env) for arg in node.args))
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Constant):
        return node.value
    raise AssertionError(f"unchecked node {type(node).__name__}")  # _check_node rejects everything else


# What a well-formed condition may still raise for one item's values; anything else is a bug in the filter.
_ITEM_ERRORS = (ZeroDivisionError, OverflowError, _ConditionFailed)


def _try_once(condition: ast.Expression, names: Sequence[str], source: str) -> None:
    """Evaluate with every capture 0: a condition that cannot work for any value (``i in 3``) is refused now."""
    try:
        _evaluate(condition, dict.fromkeys(names, 0))
    except _ITEM_ERRORS:
        pass  # may depend on the value (10 // i)
    except (TypeError, ValueError) as exc:
        raise LayoutFilterError(f"layout filter {source!r}: condition fails: {exc}") from None


def _matches_whole_item(match: str) -> bool:
    return ":" in _GROUP_OPENER.sub("", match)


@dataclass(frozen=True)
class LayoutFilter:
    """One parsed filter; build with :meth:`parse`."""

    source: str
    pattern: re.Pattern[str]
    names: tuple[str, ...]
    condition: ast.Expression | None
    whole_item: bool  # match against "model:sub_graph" rather than the sub_graph alone

    @classmethod
    def parse(cls, text: str, *, shard_id: int, shard_num: int) -> LayoutFilter:
        """Parse ``"<match>; <condition>"``; LayoutFilterError when it does not parse."""
        source = text
        text = substitute_shard(text, shard_id=shard_id, shard_num=shard_num)
        match, _, condition_text = text.partition(";")
        match = match.strip()
        condition_text = condition_text.strip()
        if not match:
            raise LayoutFilterError(f"layout filter {source!r}: empty match (expected '<match>; <condition>')")
        pattern = _compile_match(match, source)
        names = tuple(pattern.groupindex)
        condition: ast.Expression | None = None
        if condition_text:
            condition = _parse_condition(condition_text, source)
            _check_node(condition, frozenset(names), source)
            _try_once(condition, names, source)
        return cls(source, pattern, names, condition, _matches_whole_item(match))

    def accepts(self, model: str, sub_graph: str) -> bool:
        """True when the item's start matches and the condition holds (a failing condition counts as False)."""
        found = self.pattern.match(f"{model}:{sub_graph}" if self.whole_item else sub_graph)
        if found is None:
            return False
        if self.condition is None:
            return True
        try:
            # A group in an optional part may not take part in the match (Monolith would fail on int(None)).
            env = {name: int(value) for name, value in found.groupdict().items() if value is not None}
            return bool(_evaluate(self.condition, env))
        except KeyError as exc:
            log.warning(
                "layout filter %r: %s did not capture in %s:%s; not accepted", self.source, exc, model, sub_graph
            )
        except (*_ITEM_ERRORS, TypeError, ValueError) as exc:
            log.warning("layout filter %r: %s for %s:%s; not accepted", self.source, exc, model, sub_graph)
        return False


@dataclass(frozen=True)
class LayoutFilterSet:
    """All ``layout_filters`` of an agent: an item is accepted when any filter accepts it (or none exist)."""

    filters: tuple[LayoutFilter, ...]

    @classmethod
    def parse(cls, texts: Iterable[str], *, shard_id: int, shard_num: int) -> LayoutFilterSet:
        return cls(tuple(LayoutFilter.parse(t, shard_id=shard_id, shard_num=shard_num) for t in texts))

    def accepts(self, model: str, sub_graph: str) -> bool:
        return not self.filters or any(f.accepts(model, sub_graph) for f in self.filters)

    def select(self, items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        return [item for item in items if self.accepts(*item)]
