"""argparse ``type=`` callables for the client's numeric flags.

A value out of range is refused while the flags are parsed, so the user sees a usage error naming the flag
(argparse prints ``argument --rows: must be an integer >= 1, got '0'`` and exits 2) instead of a traceback
from deep in numpy, protobuf or the load generator.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

INT64_MAX = 2**63 - 1
# gRPC's deadline arithmetic overflows a little above 2**31 s and then fails every call with DEADLINE_EXCEEDED;
# no client call or load test should run for more than a week.
MAX_SECONDS = 7 * 24 * 3600.0


def _range_text(low: int, high: int | None) -> str:
    return f">= {low}" if high is None else f"from {low} to {high}"


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """A parser of integers in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {_range_text(low, high)}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {_range_text(low, high)}, got {text!r}")
        return value

    return parse


def positive_seconds(text: str) -> float:
    """A finite number of seconds in ``(0, MAX_SECONDS]``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 and <= {MAX_SECONDS:g}, got {text!r}")
    return value


# absl's spellings of a boolean flag's value (tfs_client's flags are absl flags), any case.
_ABSL_TRUE = frozenset({"true", "t", "1"})
_ABSL_FALSE = frozenset({"false", "f", "0"})


def absl_bool(text: str) -> bool:
    """The value of ``--flag=VALUE`` for a boolean flag, as absl reads it: true/t/1 or false/f/0."""
    lowered = text.strip().lower()
    if lowered in _ABSL_TRUE:
        return True
    if lowered in _ABSL_FALSE:
        return False
    raise argparse.ArgumentTypeError(f"must be true/t/1 or false/f/0, got {text!r}")
