"""SequentialCreates: a sequential create whose reply was lost is adopted by the next create, never repeated.

The backends' lookups run against real servers in tests/integration/test_discovery_{zk,consul}.py; here the
bookkeeping around them, with scripted callbacks.
"""

from __future__ import annotations

import asyncio

import pytest

from monolith_serving.core.errors import FailedPreconditionError, UnavailableError
from monolith_serving.discovery.base import SequentialCreates, is_sequential_name

PREFIX = "/bz/service/m/entry:0/0"


class Server:
    """Scripted backend calls: ``create`` hands out the next numbered path or raises what ``fail_next`` holds;
    ``find_own`` answers ``own`` (and records what data it was asked about); ``release`` records the path."""

    def __init__(self) -> None:
        self.number = 0
        self.fail_next: Exception | None = None
        self.own: list[str] = []
        self.asked: list[frozenset[bytes]] = []
        self.released: list[str] = []
        self.creates = 0

    async def create(self) -> str:
        self.creates += 1
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        path = f"{PREFIX}{self.number:010d}"
        self.number += 1
        return path

    async def find_own(self, sent: frozenset[bytes]) -> list[str]:
        self.asked.append(sent)
        return list(self.own)

    async def release(self, path: str) -> None:
        self.released.append(path)


async def create(creates: SequentialCreates, server: Server, data: bytes = b"d") -> str:
    return await creates.create(PREFIX, data, create=server.create, find_own=server.find_own, release=server.release)


def test_a_create_that_never_failed_looks_for_nothing() -> None:
    async def body() -> None:
        creates, server = SequentialCreates(), Server()
        assert await create(creates, server) == f"{PREFIX}0000000000"
        assert await create(creates, server) == f"{PREFIX}0000000001"
        assert server.asked == []

    asyncio.run(body())


def test_after_a_lost_reply_the_lowest_own_node_is_adopted_and_the_others_released() -> None:
    async def body() -> None:
        creates, server = SequentialCreates(), Server()
        server.fail_next = UnavailableError("reply lost")
        with pytest.raises(UnavailableError):
            await create(creates, server, b"first")
        server.fail_next = UnavailableError("reply lost")
        with pytest.raises(UnavailableError):
            await create(creates, server, b"second")
        server.own = [f"{PREFIX}0000000007", f"{PREFIX}0000000005"]
        assert await create(creates, server, b"third") == f"{PREFIX}0000000005"
        assert server.asked[-1] == {b"first", b"second"}  # the data of every create whose outcome is unknown
        assert server.released == [f"{PREFIX}0000000007"]
        assert server.creates == 2  # adopted, not created again
        # Settled: the next create makes a node without looking.
        server.own = []
        asked = len(server.asked)
        assert await create(creates, server) == f"{PREFIX}0000000000"
        assert len(server.asked) == asked

    asyncio.run(body())


def test_a_node_already_handed_out_is_never_adopted() -> None:
    async def body() -> None:
        creates, server = SequentialCreates(), Server()
        first = await create(creates, server)
        server.fail_next = UnavailableError("request never sent")
        with pytest.raises(UnavailableError):
            await create(creates, server)
        server.own = [first]  # ours and holding the same data, but the caller has it already
        second = await create(creates, server)
        assert second != first and server.creates == 3

    asyncio.run(body())


def test_a_failed_lookup_keeps_the_unknown_create_for_the_next_try() -> None:
    async def body() -> None:
        creates, server = SequentialCreates(), Server()
        server.fail_next = UnavailableError("reply lost")
        with pytest.raises(UnavailableError):
            await create(creates, server)

        async def unreachable(_sent: frozenset[bytes]) -> list[str]:
            raise UnavailableError("still disconnected")

        with pytest.raises(UnavailableError):
            await creates.create(PREFIX, b"d", create=server.create, find_own=unreachable, release=server.release)
        assert server.creates == 1  # no create while the lost one may exist
        server.own = [f"{PREFIX}0000000004"]
        assert await create(creates, server) == f"{PREFIX}0000000004"

    asyncio.run(body())


def test_an_error_that_is_not_unavailability_marks_nothing() -> None:
    async def body() -> None:
        creates, server = SequentialCreates(), Server()
        server.fail_next = FailedPreconditionError("corrupt counter")
        with pytest.raises(FailedPreconditionError):
            await create(creates, server)
        await create(creates, server)
        assert server.asked == []

    asyncio.run(body())


@pytest.mark.parametrize(
    ("name", "expected"),
    [("00000000012", True), ("0000000012", False), ("000000000123", False), ("0000000001x", False), ("1" * 11, False)],
)
def test_is_sequential_name(name: str, expected: bool) -> None:
    assert is_sequential_name(name, "0") is expected


def test_a_create_whose_caller_was_cancelled_is_looked_for_next_time() -> None:
    """The caller's task cancelled while the backend's create runs: the node may be made all the same."""

    async def body() -> None:
        creates, server = SequentialCreates(), Server()
        started, never = asyncio.Event(), asyncio.Event()

        async def slow_create() -> str:
            started.set()
            await never.wait()
            return f"{PREFIX}0000000000"

        caller = asyncio.create_task(
            creates.create(PREFIX, b"d", create=slow_create, find_own=server.find_own, release=server.release)
        )
        await started.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        server.own = [f"{PREFIX}0000000000"]  # the server made it after all
        assert await create(creates, server) == f"{PREFIX}0000000000"
        assert server.asked == [frozenset({b"d"})] and server.creates == 0

    asyncio.run(body())
