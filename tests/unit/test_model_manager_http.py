"""The manager's HTTP port answers every rollback request: an error that keeps a rollback from running becomes
an HTTP status with the error's message (never a dropped connection)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from monolith_serving.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
    UnavailableError,
)
from monolith_serving.model_manager.http_endpoint import StatusEndpoint
from monolith_serving.model_manager.metrics import ModelManagerMetrics


class RefusingManager:
    """Stands in for ModelManager: every rollback request fails with ``error`` (as ``_serve_rollbacks`` hands
    the rollout's exception to the requester)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, error: Exception) -> None:
        self.loop = loop
        self.error = error

    def snapshot(self) -> dict[str, Any]:
        return {"models": {}}

    async def request_rollback(self, model: str, version: int) -> None:
        raise self.error


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def post_rollback(port: int) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rollback?model=demo&version=3", method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnavailableError("zookeeper zk:2181 not connected (suspended)"), 503),
        (FailedPreconditionError("demo version 3: no readable serving spec"), 409),
        (InvalidArgumentError("bad version"), 400),
        (NotFoundError("demo version 3 is not on disk"), 404),
        (MonolithServingError("something else"), 500),
        (RuntimeError("a bug"), 500),
    ],
)
def test_a_rollback_that_cannot_run_is_answered_with_its_status(
    loop: asyncio.AbstractEventLoop, error: Exception, status: int
) -> None:
    manager = RefusingManager(loop, error)
    endpoint = StatusEndpoint(
        manager,  # type: ignore[arg-type]
        ModelManagerMetrics(),
        host="127.0.0.1",
        port=0,
        rollback_timeout_s=10,
    )
    endpoint.start()
    try:
        code, body = post_rollback(endpoint.port)
    finally:
        endpoint.stop()
    assert code == status
    assert str(error) in body["error"]
