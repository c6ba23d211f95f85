"""core.aio_wait: bounded waits that keep a cancellation that arrives as the awaited thing completes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from monolith_serving.core.aio_wait import event_set_within, within

Waiter = Callable[[Awaitable[Any], float], Awaitable[Any]]


async def _cancel_as_it_completes(wait: Waiter) -> str:
    """A loop stopped by cancel(), cancelled in the very loop turn its awaited future gets its result: the
    race that left a ReplicaWatcher resync loop running after stop()."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    async def stoppable_loop() -> str:
        while True:
            await wait(done, 10.0)
            return "kept running after cancel()"

    task = asyncio.create_task(stoppable_loop())
    await asyncio.sleep(0)  # the task now waits on ``done``
    done.set_result(None)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


def test_cancellation_is_not_swallowed_when_the_awaited_future_just_completed() -> None:
    assert asyncio.run(_cancel_as_it_completes(within)) == "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 made wait_for an alias of asyncio.timeout")
def test_the_race_is_real_for_wait_for_on_this_python() -> None:
    # Shows the test above sets up the race for real: the banned asyncio.wait_for loses the cancellation here.
    assert asyncio.run(_cancel_as_it_completes(asyncio.wait_for)) == "kept running after cancel()"


def test_within_returns_the_result_and_times_out() -> None:
    async def body() -> None:
        assert await within(asyncio.sleep(0, result=7), 1.0) == 7
        assert await within(asyncio.sleep(0.01, result=8), None) == 8
        with pytest.raises(TimeoutError):
            await within(asyncio.sleep(5), 0.02)

    asyncio.run(body())


def test_event_set_within() -> None:
    async def body() -> None:
        event = asyncio.Event()
        assert not await event_set_within(event, 0.02)
        asyncio.get_running_loop().call_later(0.01, event.set)
        assert await event_set_within(event, 5.0)

    asyncio.run(body())
