"""The manager's control loop on a local p2p folder and the fake cluster: receive, roll out, remember failed
versions until their files change, rollback pin, retention that spares versions in use."""

from __future__ import annotations

import asyncio
from pathlib import Path

from model_manager_fakes import MODEL, FakeClock, FakeCluster, fake_coordinator

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.model_manager.control import Replica, ServerKind, VersionState, VersionStatus
from monolith_serving.model_manager.fs import LocalFileSystem
from monolith_serving.model_manager.grpc_control import GrpcReplicaControl, ReplicaList
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager, TimeoutRetry
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.p2p_copy import CopyConfig, VersionCopier, received_versions
from monolith_serving.model_manager.rollout import (
    AbortCause,
    ModelState,
    ModelTarget,
    RolloutConfig,
    RolloutCoordinator,
)
from monolith_serving.model_manager.sources import P2pSource


def publish(src: Path, version: int) -> None:
    write_demo(DemoOptions(out=src / f"{MODEL}@{version}" / MODEL, num_ps=2, rows=10, version=version,
                           files_per_partition=1))  # fmt: skip
    (src / f"{MODEL}@{version}.write.done").write_text("")


def make_manager(
    tmp_path: Path, keep: int = 5, config: ManagerConfig | None = None
) -> tuple[ModelManager, ManagedModel, FakeCluster]:
    receive = tmp_path / "receive"
    cluster = FakeCluster(base_dir=str(receive / MODEL))
    clock = FakeClock()
    metrics = ModelManagerMetrics()
    coordinator = fake_coordinator(cluster, clock, metrics)
    model = ManagedModel(
        source=P2pSource(LocalFileSystem(), str(tmp_path / "src"), MODEL),
        state=ModelState(ModelTarget(MODEL, str(receive / MODEL), 0)),
        num_ps_fixed=False,
    )
    manager = ModelManager(
        models=[model],
        coordinator=coordinator,
        copier=VersionCopier(CopyConfig(receive)),
        config=config or ManagerConfig(keep_versions=keep),
        metrics=metrics,
        wall=clock,
        clock=clock,
    )
    return manager, model, cluster


def test_versions_are_received_rolled_out_and_failures_remembered(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manager, model, cluster = make_manager(tmp_path)

    async def scenario() -> None:
        publish(src, 1)
        await manager.step()
        assert model.state.serving == 1 and model.state.target.num_ps == 2  # num_ps from the serving spec
        assert cluster.serving(ServerKind.ENTRY) == {1}
        write_demo(DemoOptions(out=src / f"{MODEL}@2" / MODEL, num_ps=2, rows=10, version=2))
        await manager.step()  # no done marker yet: ignored
        assert received_versions(tmp_path / "receive" / MODEL) == [1]
        (src / f"{MODEL}@2.write.done").write_text("")
        cluster.broken.add(2)
        await manager.step()
        assert model.state.serving == 1 and model.failed == {2: model.candidates[2].fingerprint}
        reloads = len(cluster.nodes["ps0-0:1"].configs)
        await manager.step()  # not retried: same files
        assert len(cluster.nodes["ps0-0:1"].configs) == reloads
        cluster.broken.clear()
        (src / f"{MODEL}@2" / MODEL / "ps_0" / "2" / "fixed").write_text("x")  # its files change: retried
        await manager.step()
        assert model.state.serving == 2 and model.failed == {}
        snapshot = manager.snapshot()["models"][MODEL]
        assert snapshot["serving_version"] == {"entry": 2, "ps_0": 2, "ps_1": 2}
        assert snapshot["versions_present"] == [1, 2]
        assert cluster.violations == []

    asyncio.run(scenario())


def test_rollback_pins_the_model_until_a_newer_version_appears(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manager, model, cluster = make_manager(tmp_path)

    async def scenario() -> None:
        publish(src, 1)
        await manager.step()
        publish(src, 2)
        await manager.step()
        assert model.state.serving == 2
        pending = asyncio.ensure_future(manager.request_rollback(MODEL, 1))
        await asyncio.sleep(0)
        await manager.step()
        record = await pending
        assert record.rollback and record.outcome.value == "succeeded" and model.state.serving == 1
        await manager.step()
        assert model.state.serving == 1  # pinned
        publish(src, 3)
        await manager.step()
        assert model.state.serving == 3
        assert cluster.violations == []

    asyncio.run(scenario())


def test_retention_deletes_only_versions_no_replica_holds(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manager, model, cluster = make_manager(tmp_path, keep=1)

    async def scenario() -> None:
        for version in (1, 2, 3):
            publish(src, version)
            await manager.step()
        assert received_versions(tmp_path / "receive" / MODEL) == [3]
        # 4 fails to load: 3 keeps serving, so it stays on disk although keep=1 would only keep 4.
        cluster.broken.add(4)
        publish(src, 4)
        await manager.step()
        assert model.state.serving == 3
        assert received_versions(tmp_path / "receive" / MODEL) == [3, 4]
        publish(src, 5)
        await manager.step()
        assert model.state.serving == 5
        assert received_versions(tmp_path / "receive" / MODEL) == [5]

    asyncio.run(scenario())


def available_on(cluster: FakeCluster, address: str) -> set[int]:
    return {v for v, s in cluster.nodes[address].versions.items() if s.state is VersionState.AVAILABLE}


def test_a_restarted_manager_adopts_while_an_entry_is_still_loading(tmp_path: Path) -> None:
    # Version 1 serves; one entry pod just restarted (LOADING 1, nothing AVAILABLE): the manager must still
    # know 1 serves, so the failed rollout to 2 goes back to 1 instead of aborting to "serve nothing".
    src = tmp_path / "src"
    manager, model, cluster = make_manager(tmp_path)
    for node in cluster.nodes.values():
        node.versions = {1: VersionStatus(1, VersionState.AVAILABLE)}
    cluster.nodes["entry-1:1"].versions = {1: VersionStatus(1, VersionState.LOADING)}
    cluster.broken.add(2)

    async def scenario() -> None:
        publish(src, 1)
        publish(src, 2)
        await manager.step()
        record = model.state.last_rollout
        assert record is not None and (record.previous, record.version, record.outcome.value) == (1, 2, "failed")
        assert model.state.serving == 1
        assert [c.versions for c in cluster.nodes["ps0-0:1"].configs] == [(1, 2), (1,)]  # never specific {}
        assert cluster.serving(ServerKind.PS) == {1} and available_on(cluster, "entry-0:1") == {1}
        await manager.step()  # reconcile: the restarted entry serves 1 again
        assert cluster.serving(ServerKind.ENTRY) == {1} and cluster.violations == []

    asyncio.run(scenario())


def test_a_restarted_manager_never_drops_a_version_split_entries_serve(tmp_path: Path) -> None:
    # Restarted (no persisted state) while a rollout 1 -> 2 was mid entry phase: entry-0 still serves 1 (it
    # cannot load 2), entry-1 serves 2, every PS holds both. Nothing may stop serving.
    src = tmp_path / "src"
    manager, model, cluster = make_manager(tmp_path)
    for node in cluster.nodes.values():
        if node.replica.kind is ServerKind.PS:
            node.versions = {v: VersionStatus(v, VersionState.AVAILABLE) for v in (1, 2)}
    cluster.nodes["entry-0:1"].versions = {1: VersionStatus(1, VersionState.AVAILABLE)}
    cluster.nodes["entry-1:1"].versions = {2: VersionStatus(2, VersionState.AVAILABLE)}
    cluster.broken_entries["entry-0:1"] = {2}

    async def scenario() -> None:
        publish(src, 1)
        publish(src, 2)
        for _ in range(3):
            await manager.step()
        assert model.state.serving == 2 and model.state.ps_versions == (1, 2)
        assert available_on(cluster, "entry-0:1") == {1} and available_on(cluster, "entry-1:1") == {2}
        assert cluster.serving(ServerKind.PS) == {1, 2} and cluster.violations == []

    asyncio.run(scenario())


def test_a_version_with_fewer_ps_shards_is_copied_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    manager, model, _ = make_manager(tmp_path)
    registry = manager._metrics.registry

    async def scenario() -> None:
        publish(src, 1)  # two PS shards
        await manager.step()
        write_demo(DemoOptions(out=src / f"{MODEL}@2" / MODEL, num_ps=1, rows=10, version=2, files_per_partition=1))
        (src / f"{MODEL}@2.write.done").write_text("")
        for _ in range(3):
            await manager.step()
        assert model.state.serving == 2 and model.local_versions == (1, 2)
        copies = registry.get_sample_value("monolith_model_manager_copies_total", {"model": MODEL, "outcome": "ok"})
        assert copies == 2  # one copy per version, not one per scan

    asyncio.run(scenario())


def test_a_timed_out_rollout_is_retried_with_a_bounded_backoff_not_failed_for_good(tmp_path: Path) -> None:
    src = tmp_path / "src"
    config = ManagerConfig(retry_after_timeout_s=100, retry_after_timeout_max_s=150)
    manager, model, cluster = make_manager(tmp_path, config=config)
    clock = manager._clock
    assert isinstance(clock, FakeClock)
    ps = cluster.nodes["ps1-0:1"]

    async def attempt_after(wait_s: float) -> bool:
        """Whether a step ``wait_s`` later rolls out again."""
        before = model.state.last_rollout
        clock.now += wait_s
        await manager.step()
        return model.state.last_rollout is not before

    async def scenario() -> None:
        publish(src, 1)
        await manager.step()
        publish(src, 2)
        ps.up = False  # a PS replica unreachable for a while (pod rescheduled)
        await manager.step()
        record = model.state.last_rollout
        assert record is not None and record.outcome.value == "failed" and record.cause is AbortCause.TIMED_OUT
        assert model.state.serving == 1 and model.failed == {}  # a timeout says nothing about version 2
        assert not await attempt_after(99) and await attempt_after(2)  # 100 s after the first timeout
        assert not await attempt_after(149) and await attempt_after(2)  # then 200 s, capped at 150 s
        assert model.timeout_retries[2].attempts == 3
        ps.up = True
        assert not await attempt_after(149) and await attempt_after(2)
        assert model.state.serving == 2 and model.timeout_retries == {} and model.failed == {}
        assert cluster.violations == []

    asyncio.run(scenario())


class ReschedulingReplicas(ReplicaList):
    """Discovery where the one PS pod comes back at a new address each time it is rescheduled."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.generation = 0

    def replicas(self, model: str) -> list[Replica]:
        # A Unix socket that does not exist: every call fails at once, without any network.
        return [Replica(ServerKind.PS, 0, f"unix:{self.folder}/ps-{self.generation}.sock")]


def test_the_loop_closes_channels_of_replicas_no_longer_listed(tmp_path: Path) -> None:
    listed = ReschedulingReplicas(tmp_path)

    async def scenario() -> None:
        control = GrpcReplicaControl(listed)
        manager = ModelManager(
            models=[
                ManagedModel(
                    source=P2pSource(LocalFileSystem(), str(tmp_path / "src"), MODEL),
                    state=ModelState(ModelTarget(MODEL, str(tmp_path / "receive" / MODEL), 1)),
                    num_ps_fixed=True,
                )
            ],
            coordinator=RolloutCoordinator(
                control=control, config=RolloutConfig(rpc_timeout_s=2), metrics=ModelManagerMetrics()
            ),
            copier=VersionCopier(CopyConfig(tmp_path / "receive")),
            config=ManagerConfig(),
            metrics=ModelManagerMetrics(),
        )
        try:
            for generation in range(4):
                listed.generation = generation
                await manager.step()
                assert set(control._channels) == {r.address for r in listed.replicas(MODEL)}
        finally:
            await control.close()

    asyncio.run(scenario())


def test_the_timeout_backoff_stays_capped_after_very_many_timeouts(tmp_path: Path) -> None:
    # 2.0 ** 1024 overflows: a replica gone for weeks must not turn the backoff into a retry every step.
    config = ManagerConfig(retry_after_timeout_s=30, retry_after_timeout_max_s=600)
    manager, model, _ = make_manager(tmp_path, config=config)
    model.timeout_retries[2] = TimeoutRetry(1024, 0.0)
    manager._schedule_retry(model, 2)
    assert model.timeout_retries[2].attempts == 1025
    assert model.timeout_retries[2].at_s == manager._clock() + 600
    assert manager._waiting_for_retry(model, 2)
