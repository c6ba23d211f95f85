"""Bounded waits that never swallow a cancellation.

On Python 3.11 ``asyncio.wait_for`` returns the awaited result when its task is cancelled in the same loop turn
that the awaited future completes, and the cancellation is lost. A loop that is stopped by ``task.cancel()``
(a resync loop, a poll loop) then keeps running, and the ``stop()`` that awaits it waits forever: a ZooKeeper
test hung that way for two minutes. ``asyncio.timeout`` counts cancellations per task and re-raises an outside
one, so every bounded wait in the services goes through it (ruff bans ``asyncio.wait_for`` in ``services/``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float | None) -> T:
    """``await awaitable``, raising TimeoutError after ``timeout_s`` (None: no limit)."""
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def event_set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """True once ``event`` is set, False if ``timeout_s`` passed first."""
    try:
        await within(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
