"""Waiting for an asyncio.Event with a timeout, answered as a bool (the readiness waits of several services)."""

from __future__ import annotations

import asyncio


async def event_set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """True once ``event`` is set, False if ``timeout_s`` passed first."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
