"""The rollout coordinator against an in-memory fake of our ReplicaControl interface.

The fake behaves like our ps/entry servers: a PS loads the versions of its config (a version in
``broken`` ends with an error) and unloads the others once a wanted one is AVAILABLE; an entry serves a
version only while every PS shard has it. After every change the fake checks the rollout invariant: no
entry serves a version some PS replica of some shard lacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from model_manager_fakes import MODEL, FakeClock, FakeCluster

from monolith_serving.model_manager.control import LoadConfig, Replica, ServerKind, VersionState, VersionStatus
from monolith_serving.model_manager.grpc_control import reload_request
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import (
    AbortCause,
    ModelState,
    ModelTarget,
    Outcome,
    Phase,
    ReplicaView,
    RolloutConfig,
    RolloutCoordinator,
    adoptable_version,
)


def make(cluster: FakeCluster, timeout_s: float = 30.0) -> tuple[RolloutCoordinator, ModelState, ModelManagerMetrics]:
    clock = FakeClock()
    metrics = ModelManagerMetrics()
    coordinator = RolloutCoordinator(
        control=cluster,
        config=RolloutConfig(timeout_s=timeout_s, poll_interval_s=1.0, drain_s=1.0, resend_interval_s=5.0),
        metrics=metrics,
        clock=clock,
        wall=clock,
        sleep=clock.sleep,
    )
    state = ModelState(ModelTarget(MODEL, f"/receive/{MODEL}", cluster.num_ps))
    return coordinator, state, metrics


def failures(metrics: ModelManagerMetrics) -> float:
    value = metrics.registry.get_sample_value("monolith_model_manager_rollout_failures_total", {"model": MODEL})
    return value or 0.0


def test_first_rollout_then_upgrade_is_ps_first_and_never_mixed() -> None:
    cluster = FakeCluster()
    coordinator, state, metrics = make(cluster)
    record = asyncio.run(coordinator.rollout(state, 1))
    assert record.outcome is Outcome.SUCCEEDED
    assert cluster.serving(ServerKind.ENTRY) == {1} and cluster.serving(ServerKind.PS) == {1}
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.SUCCEEDED, record.reason
    assert record.previous == 1
    assert cluster.violations == []
    assert cluster.serving(ServerKind.ENTRY) == {2} and cluster.serving(ServerKind.PS) == {2}
    ps_configs = [c.versions for c in cluster.nodes["ps0-0:1"].configs]
    assert ps_configs == [(1,), (1, 2), (2,)]  # load beside, then clean up
    assert [c.versions for c in cluster.nodes["entry-0:1"].configs] == [(1,), (2,)]
    assert state.serving == 2 and failures(metrics) == 0


def test_a_failed_ps_load_aborts_and_leaves_entries_untouched() -> None:
    cluster = FakeCluster()
    coordinator, state, metrics = make(cluster)
    asyncio.run(coordinator.rollout(state, 1))
    cluster.broken.add(2)
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.FAILED
    assert "corrupt dump" in record.reason and record.cause is AbortCause.LOAD_FAILED
    assert state.serving == 1 and state.ps_versions == (1,) and state.entry_versions == (1,)
    assert [c.versions for c in cluster.nodes["entry-0:1"].configs] == [(1,)]  # never touched
    assert [c.versions for c in cluster.nodes["ps1-1:1"].configs][-1] == (1,)
    assert cluster.serving(ServerKind.ENTRY) == {1} and cluster.serving(ServerKind.PS) == {1}
    assert failures(metrics) == 1
    assert cluster.violations == []


def test_a_rollout_times_out_when_a_shard_never_loads() -> None:
    cluster = FakeCluster()
    coordinator, state, metrics = make(cluster, timeout_s=10.0)
    asyncio.run(coordinator.rollout(state, 1))
    cluster.slow_ps.add(2)
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.FAILED
    assert "timed out" in record.reason and "ps_0" in record.reason and record.cause is AbortCause.TIMED_OUT
    assert state.serving == 1 and cluster.serving(ServerKind.ENTRY) == {1}
    assert failures(metrics) == 1


def test_a_missing_shard_blocks_the_rollout() -> None:
    cluster = FakeCluster(num_ps=3, ps_replicas=1)  # ps_2 has a replica...
    del cluster.nodes["ps2-0:1"]  # ...until it vanishes
    coordinator, state, _ = make(cluster, timeout_s=5.0)
    record = asyncio.run(coordinator.rollout(state, 1))
    assert record.outcome is Outcome.FAILED
    assert "ps_2 (no replica)" in record.reason


def test_rollback_moves_back_the_same_way() -> None:
    cluster = FakeCluster()
    coordinator, state, _ = make(cluster)
    asyncio.run(coordinator.rollout(state, 1))
    asyncio.run(coordinator.rollout(state, 2))
    record = asyncio.run(coordinator.rollout(state, 1, rollback=True))
    assert record.outcome is Outcome.SUCCEEDED and record.rollback
    assert [c.versions for c in cluster.nodes["ps0-1:1"].configs][-2:] == [(1, 2), (1,)]
    assert cluster.serving(ServerKind.ENTRY) == {1} and cluster.violations == []


def test_a_restarted_replica_gets_the_current_config_again() -> None:
    cluster = FakeCluster()
    coordinator, state, _ = make(cluster)
    asyncio.run(coordinator.rollout(state, 1))
    asyncio.run(coordinator.rollout(state, 2))
    # ps0-0 restarts with its own start-up config: latest on disk, which is a version not rolled out.
    cluster.nodes["ps0-0:1"].up = False
    assert not asyncio.run(coordinator.observe(state))
    cluster.add(Replica(ServerKind.PS, 0, "ps0-0:1"), versions=(3,))
    assert asyncio.run(coordinator.observe(state))
    asyncio.run(coordinator.reconcile(state))
    assert cluster.nodes["ps0-0:1"].configs[-1].versions == (2,)
    assert cluster.serving(ServerKind.PS) == {2}


def test_reconcile_resends_to_a_drifted_replica_only_after_the_interval() -> None:
    cluster = FakeCluster()
    coordinator, state, _ = make(cluster)
    asyncio.run(coordinator.rollout(state, 1))
    node = cluster.nodes["entry-1:1"]
    node.versions = {}  # restarted between two polls: same address, holds nothing
    sends = len(node.configs)
    asyncio.run(coordinator.observe(state))
    asyncio.run(coordinator.reconcile(state))
    assert len(node.configs) == sends  # config was sent 0 s ago
    clock = coordinator._clock
    assert isinstance(clock, FakeClock)
    clock.now += 6
    asyncio.run(coordinator.observe(state))
    asyncio.run(coordinator.reconcile(state))
    assert len(node.configs) == sends + 1 and node.versions[1].state is VersionState.AVAILABLE


def test_adopt_learns_the_version_entries_serve() -> None:
    cluster = FakeCluster(entries=1)
    for node in cluster.nodes.values():
        node.versions = {7: VersionStatus(7, VersionState.AVAILABLE)}
    coordinator, state, _ = make(cluster)
    asyncio.run(coordinator.observe(state))
    asyncio.run(coordinator.adopt(state))
    assert state.serving == 7 and state.ps_versions == (7,) and state.in_use() == {7}
    record = asyncio.run(coordinator.rollout(state, 8))
    assert record.outcome is Outcome.SUCCEEDED and cluster.violations == []


def test_adopting_split_entries_keeps_their_versions_on_the_ps_until_the_entries_settle() -> None:
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        node.versions = {v: VersionStatus(v, VersionState.AVAILABLE) for v in (1, 2)}
    cluster.nodes["entry-0:1"].versions = {1: VersionStatus(1, VersionState.AVAILABLE)}
    cluster.nodes["entry-1:1"].versions = {2: VersionStatus(2, VersionState.AVAILABLE)}
    coordinator, state, _ = make(cluster)
    asyncio.run(coordinator.observe(state))
    asyncio.run(coordinator.adopt(state))
    assert state.serving == 2 and state.entry_versions == (2,) and state.ps_versions == (1, 2)
    asyncio.run(coordinator.reconcile(state))  # entry-0 moves to 2; the PS still keeps 1 meanwhile
    assert cluster.serving(ServerKind.ENTRY) == {2} and cluster.serving(ServerKind.PS) == {1, 2}
    asyncio.run(coordinator.observe(state))
    asyncio.run(coordinator.reconcile(state))  # every entry settled: 1 is released
    assert state.ps_versions == (2,) and cluster.serving(ServerKind.PS) == {2}
    assert cluster.violations == []


@pytest.mark.parametrize(
    ("entries", "ps", "persisted", "adopted"),
    [
        ({1}, {1}, None, 1),
        ({1, 2}, {1, 2}, 1, 1),  # the previous run's serving version wins while entries and PS still have it
        ({1, 2}, {1, 2}, None, 2),
        ({2}, {1}, None, 2),  # no version complete anywhere: the newest an entry holds
        (set(), {1}, 3, 1),  # the persisted version is held by no replica: not taken
        (set(), set(), 3, None),  # nothing held: a fresh cluster, the next rollout is a first one
    ],
)
def test_adoptable_version(entries: set[int], ps: set[int], persisted: int | None, adopted: int | None) -> None:
    def view(kind: ServerKind, versions: set[int]) -> ReplicaView:
        statuses = tuple(VersionStatus(v, VersionState.AVAILABLE) for v in versions)
        return ReplicaView(Replica(kind, 0, f"{kind.value}:1"), statuses)

    views = [view(ServerKind.ENTRY, entries), view(ServerKind.PS, ps)]
    assert adoptable_version(views, persisted) == adopted


@pytest.mark.parametrize("entries", [0, 1])
def test_replicas_down_during_rollout_fail_it_after_the_deadline(entries: int) -> None:
    cluster = FakeCluster(entries=entries)
    coordinator, state, _ = make(cluster, timeout_s=5.0)
    asyncio.run(coordinator.rollout(state, 1))
    cluster.nodes["ps1-0:1"].up = False
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.FAILED and "ps1-0:1" in record.reason
    assert state.serving == 1


# A unified container hosts several sub-models behind one address and a reload replaces its whole set: the
# fake unloads any sub-model a reload there leaves out (``cluster.unloaded``).
UNIFIED = "unified-0:1"


def available(cluster: FakeCluster, key: str) -> set[int]:
    return {v for v, s in cluster.nodes[key].versions.items() if s.state is VersionState.AVAILABLE}


def test_a_container_hosting_two_ps_shards_keeps_both_through_rollouts_and_a_restart() -> None:
    cluster = FakeCluster(num_ps=2, ps_replicas=2, entries=1)
    cluster.colocate(UNIFIED, cluster.nodes["ps0-0:1"], cluster.nodes["ps1-0:1"])
    coordinator, state, _ = make(cluster)
    for version in (1, 2):
        record = asyncio.run(coordinator.rollout(state, version))
        assert record.outcome is Outcome.SUCCEEDED, record.reason
    assert cluster.unloaded == [] and cluster.violations == []
    for key in (f"{UNIFIED}/ps_0", f"{UNIFIED}/ps_1"):
        assert cluster.nodes[key].hosting and available(cluster, key) == {2}
        assert [c.versions for c in cluster.nodes[key].configs] == [(1,), (1, 2), (2,)]
    assert all(len(configs) == 2 for address, configs in cluster.requests if address == UNIFIED)
    # The container restarts with its start-up config: one reload gives both shards theirs again.
    for node in cluster.at(UNIFIED):
        node.up = False
    asyncio.run(coordinator.observe(state))
    for node in cluster.at(UNIFIED):
        node.up, node.versions = True, {3: VersionStatus(3, VersionState.AVAILABLE)}
    asyncio.run(coordinator.observe(state))
    sent = len(cluster.requests)
    asyncio.run(coordinator.reconcile(state))
    assert [(a, [c.versions for c in cs]) for a, cs in cluster.requests[sent:]] == [(UNIFIED, [(2,), (2,)])]
    assert cluster.unloaded == [] and available(cluster, f"{UNIFIED}/ps_1") == {2}


def test_a_container_hosting_ps_0_and_the_entry_keeps_the_entry_serving_old_during_the_ps_phase() -> None:
    cluster = FakeCluster(num_ps=2, ps_replicas=1, entries=2)
    cluster.colocate(UNIFIED, cluster.nodes["ps0-0:1"], cluster.nodes["entry-0:1"])
    entry = f"{UNIFIED}/entry"
    coordinator, state, _ = make(cluster)
    assert asyncio.run(coordinator.rollout(state, 1)).outcome is Outcome.SUCCEEDED
    assert available(cluster, entry) == {1} and available(cluster, f"{UNIFIED}/ps_0") == {1}
    cluster.unloaded.clear()
    served_by_entry: list[set[int]] = []  # after every reload of the container during the PS phase
    at_entry_phase: list[tuple[set[int], bool]] = []

    async def on_phase() -> None:
        if state.phase is Phase.ENTRY_SWITCHING:
            at_entry_phase.append((available(cluster, entry), cluster.ps_has(2)))

    reload = cluster.reload

    async def watched(address: str, configs: Sequence[LoadConfig], timeout_s: float) -> None:
        await reload(address, configs, timeout_s)
        if address == UNIFIED and state.phase is Phase.PS_LOADING:
            served_by_entry.append(available(cluster, entry))

    cluster.reload = watched  # type: ignore[method-assign]
    record = asyncio.run(coordinator.rollout(state, 2, on_phase=on_phase))
    assert record.outcome is Outcome.SUCCEEDED, record.reason
    assert cluster.unloaded == [] and cluster.violations == []
    assert served_by_entry and all(s == {1} for s in served_by_entry)
    assert at_entry_phase == [({1}, True)]  # still on 1 while every PS has 2
    assert available(cluster, entry) == {2} and available(cluster, f"{UNIFIED}/ps_0") == {2}
    assert [c.versions for c in cluster.nodes[entry].configs][-3:] == [(1,), (2,), (2,)]  # PS phase, switch, cleanup


def test_reloads_to_one_address_are_serialized_so_an_older_one_never_overtakes_a_merged_one() -> None:
    cluster = FakeCluster(num_ps=2, ps_replicas=1, entries=0)
    cluster.colocate(UNIFIED, cluster.nodes["ps0-0:1"], cluster.nodes["ps1-0:1"])
    cluster.reload_yields = 3
    coordinator, state, _ = make(cluster)
    state.ps_versions = (1,)
    ps_0, ps_1 = cluster.replicas(MODEL)

    async def two_pushes() -> None:
        deadline = 1e9
        await asyncio.gather(coordinator._push(state, [ps_0], deadline), coordinator._push(state, [ps_1], deadline))

    asyncio.run(two_pushes())
    assert [[c.versions for c in cs] for _, cs in cluster.requests] == [[(1,), ()], [(1,), (1,)]]
    assert available(cluster, f"{UNIFIED}/ps_0") == {1} and available(cluster, f"{UNIFIED}/ps_1") == {1}


def test_a_reload_request_names_every_sub_model_but_a_dropped_one() -> None:
    configs = [
        LoadConfig("demo:ps_2", "/m/ps_2", (1, 2)),
        LoadConfig("demo:entry", "/m/entry", (), drop=True),
        LoadConfig("demo:ps_0", "/m/ps_0", ()),
    ]
    models = reload_request(configs).config.model_config_list.config
    assert [(m.name, list(m.model_version_policy.specific.versions)) for m in models] == [
        ("demo:ps_0", []),
        ("demo:ps_2", [1, 2]),
    ]


def test_adoptable_version_never_takes_a_failed_or_loading_version() -> None:
    def view(kind: ServerKind, task: int, *statuses: VersionStatus) -> ReplicaView:
        return ReplicaView(Replica(kind, task, f"{kind.value}{task}:1"), statuses)

    loading = VersionStatus(3, VersionState.LOADING)
    views = [
        view(ServerKind.ENTRY, 0, VersionStatus(1, VersionState.AVAILABLE), loading),
        view(ServerKind.PS, 0, VersionStatus(1, VersionState.AVAILABLE), VersionStatus(2, VersionState.AVAILABLE)),
    ]
    assert adoptable_version(views, None) == 1  # 3 is only loading
    assert adoptable_version(views, 2) == 1  # complete (entries and every shard) beats persisted on a PS alone
    assert adoptable_version(views, 2, failed={1}) == 2  # failing that, the persisted version AVAILABLE somewhere
    assert adoptable_version(views, None, failed={1}) == 2
    assert adoptable_version(views, None, failed={1, 2}) is None


def test_an_aborted_rollout_keeps_on_the_ps_what_adopted_entries_still_serve() -> None:
    """The previous manager stopped mid entry phase (1 -> 2): the entries are split. The restarted one adopts 1
    and tries 2 again; a PS pod is unreachable, so it times out. Entry-1 serves 2 until it is back on 1, so the
    PS must keep 2 (else that entry serves 2 with a shard lacking it)."""
    cluster = FakeCluster()
    for node in cluster.nodes.values():
        if node.replica.kind is ServerKind.PS:
            node.versions = {v: VersionStatus(v, VersionState.AVAILABLE) for v in (1, 2)}
    cluster.nodes["entry-0:1"].versions = {1: VersionStatus(1, VersionState.AVAILABLE)}
    cluster.nodes["entry-1:1"].versions = {2: VersionStatus(2, VersionState.AVAILABLE)}
    coordinator, state, _ = make(cluster, timeout_s=10)
    asyncio.run(coordinator.observe(state))
    asyncio.run(coordinator.adopt(state, persisted_serving=1))
    assert state.serving == 1 and state.ps_versions == (1, 2)
    cluster.nodes["ps1-0:1"].up = False
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.FAILED and record.cause is AbortCause.TIMED_OUT
    assert state.ps_versions == (1, 2) and state.entry_versions == (1,)
    assert cluster.violations == []
    cluster.nodes["ps1-0:1"].up = True
    for _ in range(3):  # entries settle on 1, then the PS lets 2 go
        asyncio.run(coordinator.observe(state))
        asyncio.run(coordinator.reconcile(state))
    assert cluster.serving(ServerKind.ENTRY) == {1} and state.ps_versions == (1,)
    assert cluster.violations == []


def test_a_manager_that_rolled_out_itself_adopts_nothing_afterwards() -> None:
    cluster = FakeCluster()
    coordinator, state, _ = make(cluster)
    asyncio.run(coordinator.observe(state))
    record = asyncio.run(coordinator.rollout(state, 1))
    assert record.outcome is Outcome.SUCCEEDED
    state.adopted = False  # as after a failed first rollout, which never sets it
    state.serving = None
    asyncio.run(coordinator.observe(state))
    asyncio.run(coordinator.adopt(state))
    assert state.serving is None and not state.adopted  # what it did itself is known, not guessed
