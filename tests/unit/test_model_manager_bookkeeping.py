"""The manager's per-version bookkeeping (first seen, failed, timeout retries, copy failures) follows the versions
present instead of growing with every version ever seen, without changing a decision: a failed version still
present is never retried with the same files, and the pruned ``failed`` map a restarted manager reads back still
keeps it from retrying one."""

from __future__ import annotations

import asyncio

from model_manager_fakes import MODEL, FakeClock, FakeCluster, FakeSource, fake_coordinator

from monolith_serving.discovery.static import StaticDiscovery
from monolith_serving.model_manager.control import Replica, ServerKind, VersionState, VersionStatus
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.registry_state import RegistryRecorder, RolloutState, rollout_state_path
from monolith_serving.model_manager.rollout import (
    ModelState,
    ModelTarget,
    ReplicaView,
)
from monolith_serving.model_manager.sources import VersionCandidate

BZID = "unit"


def make_manager(
    cluster: FakeCluster,
    source: FakeSource,
    *,
    config: ManagerConfig | None = None,
    recorder: RegistryRecorder | None = None,
) -> tuple[ModelManager, ManagedModel]:
    clock = FakeClock()
    metrics = ModelManagerMetrics()
    coordinator = fake_coordinator(cluster, clock, metrics)
    model = ManagedModel(
        source=source,
        state=ModelState(ModelTarget(MODEL, cluster.base_dir, cluster.num_ps)),
        num_ps_fixed=True,
    )
    manager = ModelManager(
        models=[model],
        coordinator=coordinator,
        copier=None,
        config=config or ManagerConfig(),
        metrics=metrics,
        wall=clock,
        clock=clock,
        recorder=recorder,
    )
    return manager, model


def test_per_version_bookkeeping_follows_the_versions_present_not_every_version_ever_seen() -> None:
    # An exporter keeping its newest three versions, one export per step; every fourth fails to load, every
    # fifth times out (a PS replica unreachable during that step).
    cluster = FakeCluster()
    source = FakeSource()
    manager, model = make_manager(cluster, source, config=ManagerConfig(retry_after_timeout_s=1))
    flaky = cluster.nodes["ps1-0:1"]

    async def scenario() -> None:
        for version in range(1, 61):
            source.versions = set(range(max(1, version - 2), version + 1))
            if version % 4 == 3:
                cluster.broken.add(version)
            flaky.up = version % 5 != 0
            await manager.step()
            assert len(model.first_seen_s) <= 3, sorted(model.first_seen_s)
            assert len(model.failed) <= 3 and len(model.timeout_retries) <= 3, (model.failed, model.timeout_retries)
        flaky.up = True
        clock = manager._clock
        assert isinstance(clock, FakeClock)
        clock.now += 1
        await manager.step()  # 60 (timed out) is retried and serves
        assert model.state.serving == 60
        assert sorted(model.first_seen_s) == [58, 59, 60]
        assert model.failed == {59: "fp59"}  # still present: still failed
        assert model.timeout_retries == {} and model.copy_failed_at == {}
        assert cluster.violations == []

    asyncio.run(scenario())


def test_a_failed_version_that_vanishes_for_a_while_is_not_retried_when_it_is_back() -> None:
    cluster = FakeCluster()
    source = FakeSource()
    manager, model = make_manager(cluster, source)

    async def scenario() -> None:
        source.versions = {1}
        await manager.step()
        assert model.state.serving == 1
        cluster.broken |= {2, 3}
        source.versions = {1, 2, 3}
        await manager.step()
        await manager.step()
        assert model.failed == {2: "fp2", 3: "fp3"} and model.state.serving == 1
        source.versions = {1, 3}  # 2 is not listed for a while (a listing glitch)
        await manager.step()
        cluster.broken.clear()  # 2 and 3 would load now: only a retry could tell
        source.versions = {1, 2, 3}
        reloads = len(cluster.requests)
        await manager.step()
        await manager.step()
        assert model.state.serving == 1 and len(cluster.requests) == reloads  # same files: not retried
        assert model.failed == {2: "fp2", 3: "fp3"}
        source.fingerprints[3] = "fp3-fixed"  # its files changed: retried
        await manager.step()
        assert model.state.serving == 3 and model.failed == {2: "fp2"}
        assert cluster.violations == []

    asyncio.run(scenario())


def candidate(version: int) -> VersionCandidate:
    return VersionCandidate(MODEL, version, {"entry": f"/receive/{MODEL}/entry/{version}"}, f"fp{version}")


def test_a_failed_version_some_replica_holds_is_kept_and_nothing_is_forgotten_while_holdings_are_unknown() -> None:
    manager, model = make_manager(FakeCluster(), FakeSource())
    model.failed = {2: "fp2", 4: "fp4", 7: "fp7"}
    model.candidates = {5: candidate(5), 7: candidate(7)}
    model.local_versions = (5, 7)
    ps = Replica(ServerKind.PS, 0, "ps0-0:1")
    model.state.views = {ps: ReplicaView(ps, (VersionStatus(2, VersionState.AVAILABLE),))}
    manager._forget(model)  # no replica observed yet: what they hold is unknown
    assert sorted(model.failed) == [2, 4, 7]
    model.all_answered = True
    manager._forget(model)  # 2 is older than everything present, but a PS holds it (adopt must not take it)
    assert sorted(model.failed) == [2, 7]
    model.state.views = {ps: ReplicaView(ps, (VersionStatus(5, VersionState.AVAILABLE),))}
    manager._forget(model)
    assert sorted(model.failed) == [7]
    model.candidates, model.local_versions = {}, ()
    manager._forget(model)  # nothing present (a source listing nothing for a while): nothing forgotten
    assert sorted(model.failed) == [7]


def test_the_persisted_failed_versions_shrink_and_a_restarted_manager_still_refuses_the_ones_present() -> None:
    discovery = StaticDiscovery()
    cluster = FakeCluster()
    source = FakeSource()
    path = rollout_state_path(BZID, MODEL)

    def saved_failed() -> dict[int, str]:
        return RolloutState.from_json(discovery._nodes[path]).failed

    async def scenario() -> None:
        await discovery.start()
        manager, model = make_manager(
            cluster, source, recorder=RegistryRecorder(discovery, BZID, declare_saved_models=False)
        )
        source.versions = {1}
        await manager.step()
        cluster.broken |= {2, 3, 4}
        source.versions = {1, 2, 3}
        await manager.step()
        await manager.step()
        assert saved_failed() == {2: "fp2", 3: "fp3"} and model.state.serving == 1
        source.versions = {3, 4}  # the exporter deleted 1 and 2
        await manager.step()
        assert saved_failed() == {3: "fp3", 4: "fp4"}  # 2 is gone from everywhere: forgotten

        # A new manager process (same registry and replicas): 3 and 4 would load now, but their files did not
        # change, so they are not retried.
        cluster.broken.clear()
        restarted, model2 = make_manager(
            cluster, source, recorder=RegistryRecorder(discovery, BZID, declare_saved_models=False)
        )
        reloads = len(cluster.requests)
        await restarted.step()
        await restarted.step()
        assert model2.failed == {3: "fp3", 4: "fp4"} and model2.state.serving == 1
        assert all(3 not in c.versions and 4 not in c.versions for _, configs in cluster.requests[reloads:]
                   for c in configs)  # fmt: skip
        source.versions = {4, 5}
        await restarted.step()
        assert model2.state.serving == 5 and saved_failed() == {4: "fp4"}
        assert cluster.violations == []

    asyncio.run(scenario())
