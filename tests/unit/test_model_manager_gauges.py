"""The manager's per-model gauges: a sub_graph without a serving version (no replica answered) or no longer listed
has no ``serving_version`` series (never a 0, which reads as "version 0 serves", nor a stale value), and a model
the manager stops managing leaves no gauge series behind."""

from __future__ import annotations

import asyncio

from model_manager_fakes import MODEL, FakeClock, FakeCluster, FakeSource, fake_coordinator

from monolith_serving.model_manager.control import Replica
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import ModelState, ModelTarget


class Cluster(FakeCluster):
    """The fake cluster serving ``MODEL``; other models have no replica (their rollouts succeed at once)."""

    def replicas(self, model: str) -> list[Replica]:
        return super().replicas(MODEL) if model == MODEL else []


def make_manager(cluster: FakeCluster, *sources: FakeSource) -> ModelManager:
    clock = FakeClock()
    metrics = ModelManagerMetrics()
    coordinator = fake_coordinator(cluster, clock, metrics)
    models = [
        ManagedModel(
            source=source,
            state=ModelState(
                ModelTarget(source.model, cluster.base_dir, cluster.num_ps if source.model == MODEL else 0)
            ),
            num_ps_fixed=True,
        )
        for source in sources
    ]
    return ModelManager(
        models=models,
        coordinator=coordinator,
        copier=None,
        config=ManagerConfig(),
        metrics=metrics,
        wall=clock,
        clock=clock,
    )


def serving_version(manager: ModelManager, sub_graph: str, model: str = MODEL) -> float | None:
    return manager._metrics.registry.get_sample_value(
        "monolith_model_manager_serving_version", {"model": model, "sub_graph": sub_graph}
    )


def test_a_sub_graph_none_of_whose_replicas_answers_has_no_serving_version_series() -> None:
    cluster = Cluster()
    source = FakeSource()
    manager = make_manager(cluster, source)

    async def scenario() -> None:
        source.versions = {1}
        await manager.step()
        assert [serving_version(manager, s) for s in ("entry", "ps_0", "ps_1")] == [1, 1, 1]
        for address in ("entry-0:1", "entry-1:1"):
            cluster.nodes[address].up = False
        await manager.step()
        assert serving_version(manager, "entry") is None  # not 0: "version 0 serves" trips MonolithVersionDelay
        assert [serving_version(manager, s) for s in ("ps_0", "ps_1")] == [1, 1]
        assert manager.snapshot()["models"][MODEL]["serving_version"]["entry"] is None  # /status still says so
        for address in ("entry-0:1", "entry-1:1"):
            cluster.nodes[address].up = True
        await manager.step()
        assert serving_version(manager, "entry") == 1

    asyncio.run(scenario())


def test_a_sub_graph_no_longer_listed_has_no_serving_version_series() -> None:
    cluster = Cluster()
    source = FakeSource()
    manager = make_manager(cluster, source)

    async def scenario() -> None:
        source.versions = {1}
        await manager.step()
        assert serving_version(manager, "ps_1") == 1
        for address in ("ps1-0:1", "ps1-1:1"):
            del cluster.nodes[address]  # gone from discovery
        await manager.step()
        assert serving_version(manager, "ps_1") is None  # not its last value
        assert [serving_version(manager, s) for s in ("entry", "ps_0")] == [1, 1]
        assert "ps_1" not in manager.snapshot()["models"][MODEL]["serving_version"]

    asyncio.run(scenario())


def test_the_rollout_failure_counter_exists_at_zero_before_the_first_abort() -> None:
    """An alert on increase() cannot see a counter whose series is born at its first abort."""
    manager = make_manager(Cluster(), FakeSource())
    sample = manager._metrics.registry.get_sample_value(
        "monolith_model_manager_rollout_failures_total", {"model": MODEL}
    )
    assert sample == 0
