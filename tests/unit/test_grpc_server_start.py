"""``serve_until_signal``'s start: a stop signal that arrives while ``start()`` still loads ends the start."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from monolith_serving.core import grpc_server
from monolith_serving.core.errors import UnavailableError


class FakeServer:
    """A Lifecycle whose start() waits until ``release`` is set (a first load that takes its time)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.start_cancelled = False

    async def start(self) -> None:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.start_cancelled = True
            raise
        if self.fail:
            raise UnavailableError("cannot load")

    async def stop(self) -> None:
        pass


def test_a_stop_during_start_cancels_the_start() -> None:
    async def scenario() -> tuple[bool, FakeServer]:
        server, stop = FakeServer(), asyncio.Event()
        starting = asyncio.create_task(grpc_server._start_unless_stopped(server, stop))
        await server.entered.wait()
        stop.set()
        return await starting, server

    started, server = asyncio.run(scenario())
    assert not started
    assert server.start_cancelled


def test_a_start_that_ends_first_is_started() -> None:
    async def scenario() -> bool:
        server = FakeServer()
        server.release.set()
        return await grpc_server._start_unless_stopped(server, asyncio.Event())

    assert asyncio.run(scenario())


def test_a_failed_start_raises_its_error() -> None:
    async def scenario() -> bool:
        server = FakeServer(fail=True)
        server.release.set()
        return await grpc_server._start_unless_stopped(server, asyncio.Event())

    with pytest.raises(UnavailableError):
        asyncio.run(scenario())


def test_a_start_that_ignores_its_cancellation_does_not_hold_up_the_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_server, "_START_CANCEL_WAIT_S", 0.05)

    class StubbornServer(FakeServer):
        async def start(self) -> None:
            self.entered.set()
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    self.start_cancelled = True

    async def scenario() -> tuple[bool, StubbornServer]:
        server, stop = StubbornServer(), asyncio.Event()
        starting = asyncio.create_task(grpc_server._start_unless_stopped(server, stop))
        await server.entered.wait()
        stop.set()
        started = await starting
        server.release.set()  # let the stubborn start end, so that the loop closes cleanly
        await asyncio.sleep(0)
        return started, server

    started, server = asyncio.run(scenario())
    assert not started
    assert server.start_cancelled


_STUCK_LOAD = """
import asyncio, os, signal, sys, threading
from concurrent.futures import ThreadPoolExecutor
from monolith_serving.core.grpc_server import serve_until_signal
own = ThreadPoolExecutor(1)
never = threading.Event()
class Stuck:
    async def start(self):
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)
        executor = None if sys.argv[1] == "default" else own
        await loop.run_in_executor(executor, never.wait)  # a load blocked in a stalled file system
    async def stop(self):
        own.shutdown(wait=False, cancel_futures=True)
sys.exit(serve_until_signal(Stuck, "stuck"))
"""


@pytest.mark.parametrize("executor", ["default", "own"])
def test_a_load_stuck_in_an_executor_thread_does_not_keep_the_process_alive(executor: str) -> None:
    # asyncio's shutdown of the default executor and the interpreter's exit both join such a thread forever.
    done = subprocess.run(
        [sys.executable, "-c", _STUCK_LOAD, executor], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exiting without waiting more" in done.stderr
