"""A dense_alone model's rollout: the dense_0 servers load a version beside the old one in the PS phase, keep the
old one until every entry left it, and are cleaned up with the PS, so no entry ever serves a version its dense
server lacks (the fake checks it after every reload)."""

from __future__ import annotations

import asyncio

from model_manager_fakes import MODEL, FakeClock, FakeCluster

from monolith_serving.model_manager.control import Replica, ServerKind, VersionState, VersionStatus
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import (
    AbortCause,
    ModelState,
    ModelTarget,
    Outcome,
    ReplicaView,
    RolloutConfig,
    RolloutCoordinator,
    adoptable_version,
)


def make(cluster: FakeCluster, *, dense: bool = True, timeout_s: float = 30.0) -> tuple[RolloutCoordinator, ModelState]:
    clock = FakeClock()
    coordinator = RolloutCoordinator(
        control=cluster,
        config=RolloutConfig(timeout_s=timeout_s, poll_interval_s=1.0, drain_s=1.0, resend_interval_s=5.0),
        metrics=ModelManagerMetrics(),
        clock=clock,
        wall=clock,
        sleep=clock.sleep,
    )
    return coordinator, ModelState(ModelTarget(MODEL, f"/receive/{MODEL}", cluster.num_ps, dense=dense))


def test_dense_servers_load_beside_the_ps_and_are_cleaned_up_after_the_entries_switch() -> None:
    cluster = FakeCluster(dense_replicas=2)
    coordinator, state = make(cluster)
    assert asyncio.run(coordinator.rollout(state, 1)).outcome is Outcome.SUCCEEDED
    first = len(cluster.requests)
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.SUCCEEDED, record.reason
    assert cluster.violations == []
    for address in ("dense-0:1", "dense-1:1"):
        configs = cluster.nodes[address].configs
        assert [c.versions for c in configs] == [(1,), (1, 2), (2,)]
        assert {(c.served_name, c.base_path) for c in configs} == {("dense_0", f"/receive/{MODEL}/dense_0")}
    assert cluster.serving(ServerKind.DENSE) == cluster.serving(ServerKind.ENTRY) == {2}
    # The entries were told to switch only once the dense servers held the new version.
    order = [address for address, _ in cluster.requests[first:]]
    assert max(order.index("dense-0:1"), order.index("dense-1:1")) < order.index("entry-0:1")


def test_a_failed_dense_load_aborts_before_any_entry_is_touched() -> None:
    cluster = FakeCluster(dense_replicas=1)
    coordinator, state = make(cluster)
    asyncio.run(coordinator.rollout(state, 1))
    cluster.broken_dense.add(2)
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.FAILED and record.cause is AbortCause.LOAD_FAILED
    assert "dense_0 replica dense-0:1: version 2 failed to load" in record.reason
    assert [c.versions for c in cluster.nodes["entry-0:1"].configs] == [(1,)]  # never touched
    assert cluster.nodes["dense-0:1"].configs[-1].versions == (1,)
    assert cluster.serving(ServerKind.ENTRY) == {1} and cluster.violations == []


def test_a_dense_model_without_a_dense_server_cannot_roll_out() -> None:
    cluster = FakeCluster()
    coordinator, state = make(cluster, timeout_s=5.0)
    record = asyncio.run(coordinator.rollout(state, 1))
    assert record.outcome is Outcome.FAILED and "dense_0 (no replica)" in record.reason
    # The same cluster serves a model without a dense server.
    coordinator, state = make(cluster, dense=False)
    assert asyncio.run(coordinator.rollout(state, 1)).outcome is Outcome.SUCCEEDED


def test_a_restarted_manager_adopts_only_a_version_the_dense_server_holds() -> None:
    def view(kind: ServerKind, task: int, versions: set[int]) -> ReplicaView:
        statuses = tuple(VersionStatus(v, VersionState.AVAILABLE) for v in sorted(versions))
        return ReplicaView(Replica(kind, task, f"{kind.value}{task}:1"), statuses)

    views = [view(ServerKind.ENTRY, 0, {1, 2}), view(ServerKind.PS, 0, {1, 2}), view(ServerKind.PS, 1, {1, 2})]
    assert adoptable_version(views, None) == 2
    assert adoptable_version([*views, view(ServerKind.DENSE, 0, {1})], None) == 1
