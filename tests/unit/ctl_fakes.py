"""Running a v3 ``Controller`` (``agent/ctl.py``) on an in-memory registry, for the ctl tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from monolith_serving.agent.ctl import Controller
from monolith_serving.discovery.static import StaticDiscovery

T = TypeVar("T")


def run_with(body: Callable[[Controller], Awaitable[T]]) -> T:
    """``body`` given a Controller of bzid ``b1`` on a fresh StaticDiscovery; its result."""

    async def main() -> T:
        discovery = StaticDiscovery()
        async with discovery:
            return await body(Controller(discovery, "b1"))

    return asyncio.run(main())
