"""At most one rollback per model is pending: over real HTTP against a real ``ModelManager`` (on the fake cluster),
a second rollback while the first is still rolling out is refused at once with 409 naming the pending one, and the
model accepts a rollback again once the first finished. The old manager queued every request (unbounded), each one
holding an HTTP thread for up to 3 x the rollout timeout."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from model_manager_fakes import MODEL, FakeClock, FakeCluster, FakeSource, fake_coordinator

from monolith_serving.model_manager.control import LoadConfig
from monolith_serving.model_manager.http_endpoint import StatusEndpoint
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import ModelState, ModelTarget


class GatedCluster(FakeCluster):
    """Reloads wait while ``open`` is clear (a rollout in progress), telling the test through ``entered``."""

    def __init__(self, base_dir: str) -> None:
        super().__init__(base_dir=base_dir)
        self.open = asyncio.Event()
        self.open.set()
        self.entered = threading.Event()

    async def reload(self, address: str, configs: Sequence[LoadConfig], timeout_s: float) -> None:
        if not self.open.is_set():
            self.entered.set()
            await self.open.wait()
        await super().reload(address, configs, timeout_s)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def post_rollback(port: int, version: int, timeout_s: float = 30.0) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", f"/rollback?model={MODEL}&version={version}", body=b"")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_second_rollback_of_a_model_is_409_while_the_first_is_pending(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    base_dir = tmp_path / MODEL
    for version in (1, 2, 3):
        (base_dir / "entry" / str(version)).mkdir(parents=True)
    cluster = GatedCluster(str(base_dir))
    source = FakeSource(base_dir=str(base_dir))
    clock = FakeClock()
    metrics = ModelManagerMetrics()
    model = ManagedModel(
        source=source, state=ModelState(ModelTarget(MODEL, str(base_dir), cluster.num_ps)), num_ps_fixed=True
    )
    manager = ModelManager(
        models=[model],
        coordinator=fake_coordinator(cluster, clock, metrics),
        copier=None,
        config=ManagerConfig(),
        metrics=metrics,
        wall=clock,
        clock=clock,
    )
    manager.loop = loop  # as ``run`` sets it; the test drives the steps itself

    def step() -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(manager.step(), loop)

    source.versions = {1, 2, 3}
    step().result(10)
    assert model.state.serving == 3

    endpoint = StatusEndpoint(manager, metrics, host="127.0.0.1", port=0, rollback_timeout_s=30)
    endpoint.start()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            loop.call_soon_threadsafe(cluster.open.clear)
            first = pool.submit(post_rollback, endpoint.port, 1)
            # Step until the first rollback is dequeued and held mid-rollout (its PS reload waits on the gate).
            running = step()
            while not cluster.entered.wait(0.05):
                assert not first.done(), first.result()
                if running.done():
                    running.result()
                    running = step()
            assert model.state.rolling_to == 1  # what waits at the gate is the rollback

            # Answered at once (a queued one would wait for the gate, so time out here).
            second = post_rollback(endpoint.port, 2, timeout_s=5)
            same = post_rollback(endpoint.port, 1, timeout_s=5)

            loop.call_soon_threadsafe(cluster.open.set)
            running.result(10)
            first_code, first_body = first.result(10)

            # The first finished: the model takes a rollback again (served by the next step).
            third = pool.submit(post_rollback, endpoint.port, 2)
            while not third.done():
                step().result(10)
            third_code, third_body = third.result()
        finally:
            loop.call_soon_threadsafe(cluster.open.set)
            endpoint.stop()

    assert second[0] == 409, second
    assert "rollback of demo to version 1 is already in progress" in second[1]["error"]
    assert same[0] == 409
    assert first_code == 200 and first_body["version"] == 1 and first_body["rollback"]
    assert third_code == 200 and third_body["version"] == 2 and third_body["previous"] == 1
    assert model.state.serving == 2 and cluster.violations == []
