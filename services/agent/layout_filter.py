"""``layout_filters``: which layout items a unified (v3) container loads.

A filter is ``"<match>; <condition>"``, e.g. ``ps_{i}; i % 2 == 1``:

- ``<match>`` is matched against the item's sub_graph (or against ``model:sub_graph`` when the match
  itself contains ``:``). ``{name}`` captures a non-negative integer bound to ``name``; ``*`` matches
  any run of characters; everything else is literal. The whole text must match.
- ``<condition>`` (optional) is an expression over the captured names: integer literals, ``+ - * // %``,
  comparisons, ``and or not`` and parentheses. ``${shard_id}`` and ``${shard_num}`` are replaced by
  this container's values before parsing.

Conditions are parsed with :mod:`ast` and checked against a whitelist when the filter is built, so a
filter that does not parse (or names anything but its own captures, or nests deeper than
``MAX_CONDITION_DEPTH``) is rejected at start-up; they are
evaluated by walking the tree -- never with ``eval()``. An item is accepted when any filter accepts it;
no filters accept everything. Pure and thread-safe.
"""

from __future__ import annotations

import ast
import logging
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from monolith_serving.core.errors import InvalidArgumentError

__all__ = ["LayoutFilter", "LayoutFilterError", "LayoutFilterSet", "substitute_shard"]

log = logging.getLogger(__name__)

_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SHARD_VAR = re.compile(r"\$\{(shard_id|shard_num)\}")

_BIN_OPS: Mapping[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE_OPS: Mapping[type[ast.cmpop], Callable[[int, int], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


# Checking and evaluating a condition recurse once per nesting level; far deeper than any real filter needs,
# and far within Python's recursion limit (which a deeper one would hit: an uncaught RecursionError).
MAX_CONDITION_DEPTH = 200


class LayoutFilterError(InvalidArgumentError):
    """A layout filter does not parse; the message quotes the filter."""


def substitute_shard(text: str, *, shard_id: int, shard_num: int) -> str:
    """Replace ``${shard_id}`` and ``${shard_num}`` (also used for ``layout_pattern``)."""
    values = {"shard_id": shard_id, "shard_num": shard_num}
    return _SHARD_VAR.sub(lambda m: str(values[m.group(1)]), text)


def _compile_match(match: str, source: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    parts: list[str] = []
    names: list[str] = []
    pos = 0
    for capture in _CAPTURE.finditer(match):
        parts.append(_literal(match[pos : capture.start()]))
        name = capture.group(1)
        if name in names:
            raise LayoutFilterError(f"layout filter {source!r}: {{{name}}} captured twice")
        names.append(name)
        parts.append(f"(?P<{name}>[0-9]+)")
        pos = capture.end()
    parts.append(_literal(match[pos:]))
    leftover = _CAPTURE.sub("", match)
    if "{" in leftover or "}" in leftover:
        raise LayoutFilterError(f"layout filter {source!r}: bad capture in {match!r} (use {{name}})")
    return re.compile("".join(parts)), tuple(names)


def _literal(text: str) -> str:
    return ".*".join(re.escape(piece) for piece in text.split("*"))


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
    if isinstance(node, ast.Expression):
        _check_node(node.body, names, source)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            _check_node(value, names, source)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
        _check_node(node.operand, names, source)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        _check_node(node.left, names, source)
        _check_node(node.right, names, source)
    elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE_OPS for op in node.ops):
        _check_node(node.left, names, source)
        for comparator in node.comparators:
            _check_node(comparator, names, source)
    elif isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise LayoutFilterError(f"layout filter {source!r}: unknown name {node.id!r} (captures: {known})")
    elif isinstance(node, ast.Constant):
        if type(node.value) not in (int, bool):
            raise LayoutFilterError(f"layout filter {source!r}: only integer constants, got {node.value!r}")
    else:
        raise LayoutFilterError(f"layout filter {source!r}: {type(node).__name__} is not allowed in a condition")


def _evaluate(node: ast.AST, env: Mapping[str, int]) -> int:
    """Walk a tree already checked by _check_node. Python semantics for ints and booleans."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return int(all(_evaluate(v, env) for v in node.values))
        return int(any(_evaluate(v, env) for v in node.values))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, env)
        if isinstance(node.op, ast.Not):
            return int(not value)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _BIN_OPS[type(node.op)](_evaluate(node.left, env), _evaluate(node.right, env))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, env)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, env)
            if not _COMPARE_OPS[type(op)](left, right):
                return 0
            left = right
        return 1
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return int(node.value)  # bool is an int subclass
    raise AssertionError(f"unchecked node {type(node).__name__}")  # _check_node rejects everything else


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
        pattern, names = _compile_match(match, source)
        condition: ast.Expression | None = None
        if condition_text:
            condition = _parse_condition(condition_text, source)
            _check_node(condition, frozenset(names), source)
        return cls(source, pattern, names, condition, ":" in match)

    def accepts(self, model: str, sub_graph: str) -> bool:
        """True when the item matches and the condition holds (a division by zero counts as False)."""
        found = self.pattern.fullmatch(f"{model}:{sub_graph}" if self.whole_item else sub_graph)
        if found is None:
            return False
        if self.condition is None:
            return True
        env = {name: int(found.group(name)) for name in self.names}
        try:
            return bool(_evaluate(self.condition, env))
        except ZeroDivisionError:
            log.warning("layout filter %r: division by zero for %s:%s; not accepted", self.source, model, sub_graph)
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
