"""The manager's control loop on a local p2p folder and the fake cluster: receive, roll out, remember failed
versions until their files change, rollback pin, retention that spares versions in use."""

from __future__ import annotations

import asyncio
from pathlib import Path

from model_manager_fakes import MODEL, FakeClock, FakeCluster

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.model_manager.control import ServerKind
from monolith_serving.model_manager.fs import LocalFileSystem
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.p2p_copy import CopyConfig, VersionCopier, received_versions
from monolith_serving.model_manager.rollout import ModelState, ModelTarget, RolloutConfig, RolloutCoordinator
from monolith_serving.model_manager.sources import P2pSource


def publish(src: Path, version: int) -> None:
    write_demo(DemoOptions(out=src / f"{MODEL}@{version}" / MODEL, num_ps=2, rows=10, version=version,
                           files_per_partition=1))  # fmt: skip
    (src / f"{MODEL}@{version}.write.done").write_text("")


def make_manager(tmp_path: Path, keep: int = 5) -> tuple[ModelManager, ManagedModel, FakeCluster]:
    receive = tmp_path / "receive"
    cluster = FakeCluster(base_dir=str(receive / MODEL))
    clock = FakeClock()
    metrics = ModelManagerMetrics()
    coordinator = RolloutCoordinator(
        control=cluster,
        config=RolloutConfig(timeout_s=30, poll_interval_s=1, drain_s=0.5),
        metrics=metrics,
        clock=clock,
        wall=clock,
        sleep=clock.sleep,
    )
    model = ManagedModel(
        source=P2pSource(LocalFileSystem(), str(tmp_path / "src"), MODEL),
        state=ModelState(ModelTarget(MODEL, str(receive / MODEL), 0)),
        num_ps_fixed=False,
    )
    manager = ModelManager(
        models=[model],
        coordinator=coordinator,
        copier=VersionCopier(CopyConfig(receive)),
        config=ManagerConfig(keep_versions=keep),
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
