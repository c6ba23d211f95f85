"""Decoding of JSON node data: the one parser every registry reader uses.

Any process that can write to ZooKeeper or Consul can put anything into a node, so a reader must treat
the data as untrusted: whatever it holds, decoding either returns a JSON object or raises
InvalidArgumentError (the readers' "malformed node": logged, skipped). It never raises anything else, in
particular not the RecursionError ``json.loads`` raises on deeply nested input (100 kB of ``[``).
"""

from __future__ import annotations

import json
from typing import Any

from monolith_serving.core.errors import InvalidArgumentError

__all__ = ["MAX_NODE_DATA_BYTES", "MAX_NODE_DATA_DEPTH", "load_json_object"]

# Far above what any of our writers puts in a node (a few kB at most); bounds the parse time and memory
# a single node costs every reader.
MAX_NODE_DATA_BYTES = 256 * 1024
# Our formats nest a few levels. Beyond this an object is refused even when json.loads managed it:
# re-encoding it, comparing or printing it recurses once per level and could hit the recursion limit
# later, somewhere that does not expect it.
MAX_NODE_DATA_DEPTH = 32


def load_json_object(data: object, what: str) -> dict[str, Any]:
    """``data`` (bytes, or text) decoded as a JSON object nested at most ``MAX_NODE_DATA_DEPTH`` levels.

    Raises InvalidArgumentError naming ``what`` for anything else (not bytes/text, larger than
    ``MAX_NODE_DATA_BYTES``, not UTF-8 JSON, too deeply nested, not an object) and never another error.
    Pure and thread-safe.
    """
    if not isinstance(data, bytes | bytearray | str):
        raise InvalidArgumentError(f"{what}: node data must be bytes or text, got {type(data).__name__}")
    if len(data) > MAX_NODE_DATA_BYTES:
        raise InvalidArgumentError(f"{what}: node data of {len(data)} bytes exceeds {MAX_NODE_DATA_BYTES}")
    try:
        obj = json.loads(data)
    except RecursionError:
        raise InvalidArgumentError(f"{what}: not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer with too many digits
        raise InvalidArgumentError(f"{what}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    if _nesting_depth_exceeds(obj, MAX_NODE_DATA_DEPTH):
        raise InvalidArgumentError(f"{what}: JSON nested deeper than {MAX_NODE_DATA_DEPTH} levels")
    return obj


def _nesting_depth_exceeds(obj: object, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (the outer object is level 1). Iterative: no recursion."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
