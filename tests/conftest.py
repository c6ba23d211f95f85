"""Shared by every test directory: puts ``tests/`` on sys.path so that ``ports`` can be imported from any of them,
and prints the asyncio tasks of a test that is about to time out."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Generator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# pytest-timeout prints every thread's stack when a test times out, but a hung asyncio test shows only its event
# loop sitting in select(): where each coroutine waits is not in any thread's stack. So, shortly before the
# timeout, the stacks of the tasks of every running loop go to the test's captured stderr, which the failure
# report shows.
_TASK_DUMP_AT = 0.8  # of the test's timeout


def _timeout_s(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 0)


def _await_chain(awaitable: object) -> list[str]:
    """Where a suspended coroutine waits: its frame, the frame of what it awaits, and so on down."""
    lines = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            lines.append(f"    awaiting {awaitable!r}\n")
            break
        lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}\n')
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return lines


def _dump_tasks(test: str) -> None:
    # From the timer thread while the loop's thread waits: reads only, good enough for a diagnosis.
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
    lines = [f"\n==== {test} still running: asyncio tasks of {len(loops)} running loop(s) ====\n"]
    for loop in loops:
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError as error:  # the loop changed its task set meanwhile
            lines.append(f"(tasks unreadable: {error})\n")
            continue
        for task in tasks:
            lines.append(f"-- task {task.get_name()}\n")
            lines.extend(_await_chain(task.get_coro()))
    sys.stderr.write("".join(lines))
    sys.stderr.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    timeout_s = _timeout_s(item)
    timer = None
    if timeout_s > 0:
        timer = threading.Timer(timeout_s * _TASK_DUMP_AT, _dump_tasks, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
