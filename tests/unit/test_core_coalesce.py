"""The generic Coalescer: its own guarantees, whatever the calls it wraps do (entry and proxy uses have their own
tests). Every scenario runs under asyncio.wait_for so that a caller left waiting fails the test instead of hanging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from monolith_serving.core.coalesce import Coalescer, CoalescerCalls
from monolith_serving.core.errors import MonolithServingError, UnavailableError


class Uncopyable(MonolithServingError):
    """A package error whose constructor takes other arguments than its args: copy.copy raises on it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Calls:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.many_calls: list[list[int]] = []
        self.one_calls: list[int] = []
        self.error: Exception | None = None
        self.short_answer = False

    async def one(self, key: str, item: int, deadline: float) -> int:
        self.one_calls.append(item)
        await self.gate.wait()
        return item * 10

    async def many(self, key: str, items: Sequence[int], deadline: float) -> list[int]:
        self.many_calls.append(list(items))
        if self.error is not None:
            raise self.error
        answers = [item * 10 for item in items]
        return answers[:-1] if self.short_answer else answers


def coalescer(calls: Calls) -> Coalescer[str, int, int]:
    return Coalescer(
        CoalescerCalls(
            one=calls.one,
            many=calls.many,
            size=lambda item: 1,
            expired=lambda key: UnavailableError(f"{key}: waited too long"),
            cancelled=lambda key: UnavailableError(f"{key}: cancelled"),
        ),
        max_size=100,
    )


async def _queued_behind_one(calls: Calls, merged: Coalescer[str, int, int], n: int) -> list[asyncio.Task[int]]:
    far = time.monotonic() + 30
    first = asyncio.create_task(merged.submit("k", 0, far))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(merged.submit("k", i, far)) for i in range(1, n)]
    await asyncio.sleep(0)
    calls.gate.set()
    return [first, *rest]


def test_queued_callers_share_one_call_and_each_gets_its_own_answer() -> None:
    async def scenario() -> None:
        calls = Calls()
        tasks = await _queued_behind_one(calls, coalescer(calls), 4)
        assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [0, 10, 20, 30]
        assert calls.many_calls == [[1, 2, 3]]

    asyncio.run(scenario())


def test_an_error_that_cannot_be_copied_still_reaches_every_merged_caller() -> None:
    async def scenario() -> None:
        calls = Calls()
        calls.error = Uncopyable(7, "upstream refused")
        tasks = await _queued_behind_one(calls, coalescer(calls), 4)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert outcomes[0] == 0
        assert all(isinstance(o, Uncopyable) and o.message == "upstream refused" for o in outcomes[1:])

    asyncio.run(scenario())


def test_a_merged_call_with_too_few_answers_fails_its_callers_instead_of_leaving_them_waiting() -> None:
    async def scenario() -> None:
        calls = Calls()
        calls.short_answer = True
        tasks = await _queued_behind_one(calls, coalescer(calls), 3)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert outcomes[0] == 0
        assert all(isinstance(o, RuntimeError) and "2 callers" in str(o) for o in outcomes[1:])

    asyncio.run(scenario())


@pytest.mark.parametrize("max_size", [1, 2])
def test_a_group_never_grows_past_max_size(max_size: int) -> None:
    async def scenario() -> None:
        calls = Calls()
        merged = Coalescer(
            CoalescerCalls(
                one=calls.one,
                many=calls.many,
                size=lambda item: 1,
                expired=lambda key: UnavailableError("late"),
                cancelled=lambda key: UnavailableError("cancelled"),
            ),
            max_size=max_size,
        )
        tasks = await _queued_behind_one(calls, merged, 6)
        assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [0, 10, 20, 30, 40, 50]
        # A group of one goes by ``one``; nobody rides along in a call beyond max_size.
        assert all(len(group) <= max_size for group in calls.many_calls)
        sent = calls.one_calls + [i for group in calls.many_calls for i in group]
        assert sorted(sent) == [0, 1, 2, 3, 4, 5]
        assert len(calls.one_calls) + len(calls.many_calls) == 1 + -(-5 // max_size)

    asyncio.run(scenario())


class StuckFirst(Calls):
    """The first call hangs (a backend that accepts and never answers); every later call answers at once."""

    async def one(self, key: str, item: int, deadline: float) -> int:
        self.one_calls.append(item)
        if len(self.one_calls) == 1:
            await self.gate.wait()
        return item * 10


def test_a_group_does_not_wait_for_a_stuck_call_past_its_patience() -> None:
    """A pending group waits for the call in flight at most PATIENCE of its most urgent caller's time left, then
    runs beside it, so one stuck call cannot make every later caller miss its deadline."""

    async def scenario() -> None:
        calls = StuckFirst()
        merged = coalescer(calls)
        stuck = asyncio.create_task(merged.submit("k", 0, time.monotonic() + 30))
        await asyncio.sleep(0)
        started = time.monotonic()
        late = [asyncio.create_task(merged.submit("k", i, started + 2.0)) for i in (1, 2)]
        answers = await asyncio.wait_for(asyncio.gather(*late), 1.9)
        assert answers == [10, 20] and calls.many_calls == [[1, 2]]
        # Not before its patience (a quarter of 2 s): a call that returns in time still takes the group.
        assert time.monotonic() - started >= 0.45
        assert not stuck.done()
        calls.gate.set()
        assert await asyncio.wait_for(stuck, 5) == 0

    asyncio.run(scenario())


def test_the_most_urgent_caller_sets_the_patience_of_its_group() -> None:
    async def scenario() -> None:
        calls = StuckFirst()
        merged = coalescer(calls)
        stuck = asyncio.create_task(merged.submit("k", 0, time.monotonic() + 30))
        await asyncio.sleep(0)
        relaxed = asyncio.create_task(merged.submit("k", 1, time.monotonic() + 20))
        await asyncio.sleep(0)
        urgent = asyncio.create_task(merged.submit("k", 2, time.monotonic() + 0.8))
        assert await asyncio.wait_for(asyncio.gather(relaxed, urgent), 0.7) == [10, 20]
        calls.gate.set()
        await asyncio.wait_for(stuck, 5)

    asyncio.run(scenario())
