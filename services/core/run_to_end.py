"""Changes that must not stop half-way when the caller waiting for them is cancelled.

A gRPC handler is cancelled when its client's deadline passes, and a HandleReloadConfigRequest awaits whole model
loads. Cancelled half-way, a change would leave a version LOADING for good, or a unified container with its PS part
applied and its entry part not. So the change runs in a task of its own: the caller's cancellation stops only the
caller's wait, the change goes on, and a failure nobody waits for any more is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def run_to_end(change: Coroutine[Any, Any, T], what: str, running: set[asyncio.Task[Any]]) -> T:
    """Runs ``change`` in its own task, kept in ``running`` until it ends (so its owner can wait for it or cancel
    it on close), and returns its result. ``what`` names it in the log line of an unawaited failure."""
    task = asyncio.get_running_loop().create_task(change)
    running.add(task)
    task.add_done_callback(running.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            task.add_done_callback(lambda done: _log_unawaited_failure(done, what))
        raise


def _log_unawaited_failure(change: asyncio.Task[Any], what: str) -> None:
    if not change.cancelled() and change.exception() is not None:
        logger.error("%s failed after its caller stopped waiting", what, exc_info=change.exception())
