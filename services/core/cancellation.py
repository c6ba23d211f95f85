"""Telling a task's own cancellation from a gRPC call cancelled under it."""

from __future__ import annotations

import asyncio


def cancelled_by_caller() -> bool:
    """Whether the CancelledError being handled is the current task's own cancellation (``Task.cancel()``).

    gRPC's asyncio calls also raise CancelledError when their channel is closed under them; then no one asked
    the task to stop, and the caller decides what the failed call means (left alone, it ends the client's
    request as CANCELLED with no message).
    """
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
