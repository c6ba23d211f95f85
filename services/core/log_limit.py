"""Log lines that a client or a failing dependency can trigger at request rate, held to one per key per interval.

A malformed body, a model nobody serves, a shard that is down: each would otherwise log once per request, at
thousands of lines a second, burying everything else while the metrics already count them. The first occurrence of
a key is logged at once; later ones within ``interval_s`` are counted, and the next line logged for that key says
how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_INTERVAL_S = 10.0
MAX_KEYS = 1024  # keys come from a small set (a method, a code, a model label); past this the table starts over


class RateLimitedLog:
    """``log(key, message, *args)`` logs to ``logger`` at ``level`` at most once per ``interval_s`` per key.

    Used from the event loop only (no lock)."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval_s = interval_s
        self._clock = clock
        self._keys: dict[Hashable, tuple[float, int]] = {}  # key -> (when last logged, occurrences left out since)

    def log(self, key: Hashable, message: str, *args: Any) -> None:
        if not self._logger.isEnabledFor(self._level):
            return
        now = self._clock()
        last = self._keys.get(key)
        if last is not None and now - last[0] < self._interval_s:
            self._keys[key] = (last[0], last[1] + 1)
            return
        if last is None and len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        left_out = last[1] if last is not None else 0
        self._keys[key] = (now, 0)
        if left_out:
            message = f"{message} (and {left_out} more like it in the last {now - last[0]:.0f} s)"  # type: ignore[index]
        self._logger.log(self._level, message, *args)
