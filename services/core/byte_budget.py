"""A bound on bytes held at once, refused rather than waited for (the REST gateway's request bodies and answers).

Beyond it a request is refused at once (RESOURCE_EXHAUSTED, HTTP 429) instead of queueing, as the proxy's
``Admission`` refuses beyond its in-flight bound. Not thread-safe; one asyncio loop owns each.
"""

from __future__ import annotations


class ByteBudget:
    """``try_take`` never waits: a caller that cannot take its bytes is refused. Every byte taken must be given back
    once.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be >= 1, got {capacity_bytes}")
        self._capacity_bytes = capacity_bytes
        self._in_use_bytes = 0

    @property
    def capacity_bytes(self) -> int:
        return self._capacity_bytes

    @property
    def in_use_bytes(self) -> int:
        return self._in_use_bytes

    def try_take(self, size_bytes: int) -> bool:
        """Takes ``size_bytes`` if they fit beside those taken; False (nothing taken) if not."""
        if self._in_use_bytes + size_bytes > self._capacity_bytes:
            return False
        self._in_use_bytes += size_bytes
        return True

    def give_back(self, size_bytes: int) -> None:
        self._in_use_bytes -= size_bytes
