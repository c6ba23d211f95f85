"""Backpressure: a hard bound on requests in flight, a bound on bytes held, and the drain at shutdown.

Beyond a bound a request is refused at once (RESOURCE_EXHAUSTED) instead of queueing: a queue in front
of a saturated entry only converts overload into timeouts. Not thread-safe; one asyncio loop owns each.
"""

from __future__ import annotations

import asyncio

from monolith_serving.core.aio_wait import event_set_within
from monolith_serving.core.errors import ResourceExhaustedError, UnavailableError


class Admission:
    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._max = max_in_flight
        self._in_flight = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def draining(self) -> bool:
        return self._draining

    def enter(self) -> None:
        """Admits one request or raises (ResourceExhaustedError when full, UnavailableError when draining).

        Every successful ``enter`` must be paired with one ``leave``.
        """
        if self._draining:
            raise UnavailableError("proxy is shutting down; retry on another proxy")
        if self._in_flight >= self._max:
            raise ResourceExhaustedError(f"proxy overloaded: {self._in_flight} requests in flight (max {self._max})")
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuses new requests from now on and waits for those in flight; False if some remain at timeout."""
        self._draining = True
        return await event_set_within(self._idle, timeout_s)


class ByteBudget:
    """A bound on bytes held at once by the requests that take them (the REST gateway's request bodies).

    ``try_take`` never waits: a caller that cannot take its bytes is refused, as :class:`Admission` refuses.
    Every byte taken must be given back once.
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
