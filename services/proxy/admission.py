"""Backpressure: a hard bound on requests in flight, and the drain at shutdown (the REST gateway's bound on
bytes held is ``core.byte_budget``).

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
