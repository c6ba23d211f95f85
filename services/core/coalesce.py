"""Natural batching: concurrent calls for one key merged into one call, without a timer.

Each Python gRPC hop costs a fixed ~0.3 ms of CPU on both ends whatever its size, and each numpy call a
fixed few microseconds, so under load a server saves most by doing fewer, larger pieces of work. Per key:

- with no call in flight, a caller runs its call at once, alone, from its own task (no added delay and no
  extra task at low load);
- while a call is in flight, new callers join one pending group; when a call for the key returns, the
  whole group runs as ONE call (taken a loop turn later, so that callers already on their way join it); a
  group that would grow past ``max_size`` is sent at once and a new one started, so a merged call never
  holds more than ``max_size`` (unless one caller alone does);
- every caller gets back exactly its own answer;
- a pending group waits for the call in flight at most ``PATIENCE`` of its most urgent caller's time left
  (counted from when that caller joined); then it runs beside it. Calls take milliseconds, so normally the
  group goes when the call returns; but a call stuck on a hung backend must not hold every later caller until
  their deadlines pass, when a call of their own could still be retried elsewhere in time;
- the merged call runs until the latest deadline of its participants, but each caller stops waiting at its
  own deadline (the ``expired`` error) and never hangs;
- an error of the merged call reaches every participant still waiting; cancelling one caller cancels only
  its own wait.

The entry's PS lookup coalescer (``entry.ps_coalesce``) and Predict coalescer (``entry.request_coalesce``) use it.
Loop-affine: no locks.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from monolith_serving.core.errors import MonolithServingError

K = TypeVar("K", bound=Hashable)
Q = TypeVar("Q")  # one caller's item
A = TypeVar("A")  # one caller's answer


@dataclass(eq=False)
class _Waiter(Generic[Q, A]):
    item: Q
    size: int
    deadline: float
    future: asyncio.Future[A]
    timer: asyncio.TimerHandle | None = None


PATIENCE = 0.25
"""The share of its most urgent caller's time left that a pending group waits for the call in flight."""


@dataclass(eq=False)
class _Group(Generic[Q, A]):
    waiters: list[_Waiter[Q, A]] = field(default_factory=list)
    size: int = 0
    start_by: float | None = None  # on the coalescer's clock: when it runs even if the call in flight has not returned
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _KeyState(Generic[Q, A]):
    in_flight: int = 0
    pending: _Group[Q, A] | None = None


@dataclass(frozen=True)
class CoalescerCalls(Generic[K, Q, A]):
    """What a ``Coalescer`` runs, and how it words its own errors."""

    one: Callable[[K, Q, float], Awaitable[A]]
    """``(key, item, deadline) -> answer``: the call for a single caller (deadline on the coalescer's clock)."""
    many: Callable[[K, Sequence[Q], float], Awaitable[Sequence[A]]]
    """``(key, items, deadline) -> answers``: one call for several callers, one answer per item, in order."""
    size: Callable[[Q], int]
    """How much of ``max_size`` an item takes."""
    expired: Callable[[K], Exception]
    """The error of a caller whose deadline passed while it waited for a merged call."""
    cancelled: Callable[[K], Exception]
    """The error of the callers of a merged call that was cancelled (the server shutting down)."""


class Coalescer(Generic[K, Q, A]):
    def __init__(
        self,
        calls: CoalescerCalls[K, Q, A],
        *,
        max_size: int,
        on_merged: Callable[[K, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._calls = calls
        self._max_size = max_size
        # (key, callers merged into one call) after each merged call; for metrics.
        self._on_merged = on_merged
        self._clock = clock
        self._keys: dict[K, _KeyState[Q, A]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong references to the merged calls running

    async def submit(self, key: K, item: Q, deadline: float) -> A:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        if state.in_flight == 0:
            state.in_flight += 1
            try:
                return await self._calls.one(key, item, deadline)
            finally:
                self._finished(key, state)
        return await self._join(key, state, item, deadline)

    async def _join(self, key: K, state: _KeyState[Q, A], item: Q, deadline: float) -> A:
        loop = asyncio.get_running_loop()
        waiter: _Waiter[Q, A] = _Waiter(item, self._calls.size(item), deadline, loop.create_future())
        # The caller's own deadline, whatever the group's call does (it may run until a later deadline).
        waiter.timer = loop.call_later(max(deadline - self._clock(), 0.0), self._expire, waiter, key)
        group = state.pending
        if group is not None and group.size + waiter.size > self._max_size:
            state.pending = None
            self._send(key, state, group)
            group = None
        if group is None:
            group = state.pending = _Group()
        group.waiters.append(waiter)
        group.size += waiter.size
        if group.size >= self._max_size:
            state.pending = None
            self._send(key, state, group)
        else:
            self._bound_wait(key, state, group, waiter)
        return await waiter.future

    def _bound_wait(self, key: K, state: _KeyState[Q, A], group: _Group[Q, A], waiter: _Waiter[Q, A]) -> None:
        """Makes ``group`` run by ``PATIENCE`` of ``waiter``'s time left, if that is sooner than planned."""
        now = self._clock()
        start_by = now + PATIENCE * max(waiter.deadline - now, 0.0)
        if group.start_by is not None and group.start_by <= start_by:
            return
        if group.timer is not None:
            group.timer.cancel()
        group.start_by = start_by
        group.timer = asyncio.get_running_loop().call_later(start_by - now, self._impatient, key, state, group)

    def _impatient(self, key: K, state: _KeyState[Q, A], group: _Group[Q, A]) -> None:
        """The call in flight is taking too long for ``group``: it runs now, beside that call."""
        if state.pending is group:
            state.pending = None
            self._send(key, state, group)

    def _finished(self, key: K, state: _KeyState[Q, A]) -> None:
        """A call for ``key`` returned (or failed): the pending group, if any, goes next."""
        state.in_flight -= 1
        if state.pending is not None:
            self._send(key, state, None)
        elif state.in_flight == 0:
            del self._keys[key]  # keys (versions) come and go; keep no state for idle ones

    def _send(self, key: K, state: _KeyState[Q, A], group: _Group[Q, A] | None) -> None:
        """Runs ``group`` as one call; None: whatever is pending a loop turn from now (see ``_take_pending``)."""
        state.in_flight += 1
        if group is None:
            asyncio.get_running_loop().call_soon(self._take_pending, key, state)
        else:
            self._start(key, state, group)

    def _take_pending(self, key: K, state: _KeyState[Q, A]) -> None:
        # The group goes one event-loop turn after the previous call returned, not at that moment: callers whose
        # handlers were already waiting on the loop then ride along instead of starting a small group of their
        # own (measured on the entry at 16 in flight: fewer, larger passes, p99 about 1 ms lower).
        group = state.pending
        state.pending = None
        if group is None:
            self._finished(key, state)
        else:
            self._start(key, state, group)

    def _start(self, key: K, state: _KeyState[Q, A], group: _Group[Q, A]) -> None:
        if group.timer is not None:
            group.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._run(key, state, group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: K, state: _KeyState[Q, A], group: _Group[Q, A]) -> None:
        live = [w for w in group.waiters if not w.future.done()]  # drop expired or cancelled callers
        try:
            if live:
                await self._answer(key, live)
        except asyncio.CancelledError:
            _fail(live, self._calls.cancelled(key))
            raise
        except Exception as error:  # every participant still waiting gets the error, whatever it is
            _fail(live, error)
        finally:
            for waiter in group.waiters:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                if not waiter.future.done():
                    # Only if answering or failing them went wrong itself: never leave a caller waiting forever.
                    waiter.future.set_exception(RuntimeError(f"merged call for {key!r} ended without an answer"))
            self._finished(key, state)

    async def _answer(self, key: K, live: list[_Waiter[Q, A]]) -> None:
        deadline = max(w.deadline for w in live)
        if len(live) == 1:
            answer = await self._calls.one(key, live[0].item, deadline)
            if not live[0].future.done():
                live[0].future.set_result(answer)
            return
        if self._on_merged is not None:
            self._on_merged(key, len(live))
        answers = await self._calls.many(key, [w.item for w in live], deadline)
        if len(answers) != len(live):
            raise RuntimeError(f"a merged call gave {len(answers)} answers for {len(live)} callers")
        for waiter, answer in zip(live, answers, strict=True):
            if not waiter.future.done():
                waiter.future.set_result(answer)

    def _expire(self, waiter: _Waiter[Q, A], key: K) -> None:
        if not waiter.future.done():
            waiter.future.set_exception(self._calls.expired(key))


def _fail(waiters: Sequence[_Waiter[Q, A]], error: Exception) -> None:
    for waiter in waiters:
        if waiter.future.done():
            continue
        # A fresh copy per caller of our own errors: one object raised in many tasks piles up their tracebacks.
        # One that cannot be copied (a subclass whose constructor takes other arguments) is shared.
        mine = error
        if isinstance(error, MonolithServingError):
            try:
                mine = copy.copy(error)
            except Exception:
                mine = error
        waiter.future.set_exception(mine)
