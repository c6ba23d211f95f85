"""The manager's writes into discovery (in-memory backend): v3 declarations identical to ``ctl decl``, the
rollout-state node through every phase, failed versions and the rollback pin surviving a restart, no
automatic rollout before the previous state was read; and the abort of a failed *first* rollout."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from model_manager_fakes import MODEL, FakeClock, FakeCluster, fake_coordinator

from monolith_serving.agent.ctl import Controller
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import UnavailableError
from monolith_serving.discovery.static import StaticDiscovery
from monolith_serving.entry.servicer import entry_config_from_proto
from monolith_serving.model_manager.control import LoadConfig, ServerKind, VersionState, VersionStatus
from monolith_serving.model_manager.fs import LocalFileSystem
from monolith_serving.model_manager.grpc_control import reload_request
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.p2p_copy import CopyConfig, VersionCopier
from monolith_serving.model_manager.registry_state import (
    RegistryRecorder,
    RollbackPin,
    RolloutState,
    rollout_state_path,
)
from monolith_serving.model_manager.rollout import ModelState, ModelTarget
from monolith_serving.model_manager.sources import P2pSource

BZID = "unit"
STATE_PATH = rollout_state_path(BZID, MODEL)


def publish(src: Path, version: int) -> None:
    write_demo(DemoOptions(out=src / f"{MODEL}@{version}" / MODEL, num_ps=2, rows=10, version=version,
                           files_per_partition=1))  # fmt: skip
    (src / f"{MODEL}@{version}.write.done").write_text("")


class FlakyDiscovery(StaticDiscovery):
    """The in-memory backend, unreachable while ``down``; records every rollout-state write."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.writes: list[dict[str, object]] = []

    async def get_data(self, path: str) -> bytes | None:
        if self.down:
            raise UnavailableError("registry unreachable")
        return await super().get_data(path)

    async def set_persistent(self, path: str, data: bytes) -> None:
        if self.down:
            raise UnavailableError("registry unreachable")
        if path == STATE_PATH:
            self.writes.append(json.loads(data))
        await super().set_persistent(path, data)


def make_manager(
    tmp_path: Path, discovery: FlakyDiscovery, cluster: FakeCluster, *, v3: bool = False
) -> tuple[ModelManager, ManagedModel]:
    receive = tmp_path / "receive"
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
        config=ManagerConfig(),
        metrics=metrics,
        wall=clock,
        clock=clock,
        recorder=RegistryRecorder(discovery, BZID, declare_saved_models=v3),
    )
    return manager, model


def saved(discovery: FlakyDiscovery) -> RolloutState:
    data = discovery._nodes[STATE_PATH]
    return RolloutState.from_json(data)


def test_v3_declarations_match_ctl_decl_and_are_written_only_when_missing_or_different(tmp_path: Path) -> None:
    base = tmp_path / "receive" / MODEL
    write_demo(DemoOptions(out=base, num_ps=2, rows=10))

    async def scenario() -> None:
        ours, ctl = StaticDiscovery(), StaticDiscovery()
        await ours.start()
        await ctl.start()
        await Controller(ctl, BZID).decl(base, model_name=MODEL)
        recorder = RegistryRecorder(ours, BZID, declare_saved_models=True)
        target = ModelTarget(MODEL, str(base), 2)
        written = await recorder.declare(target)
        assert len(written) == 3
        assert ours._nodes == ctl._nodes  # byte for byte what `ctl decl` writes
        decl = json.loads(ours._nodes[f"/{BZID}/saved_models/{MODEL}/ps_1"])
        assert decl == {"model_base_path": str(base / "ps_1"), "version_policy": "latest_once"}
        assert await recorder.declare(target) == []  # unchanged: nothing written (agents would reload)
        await ours.set_persistent(f"/{BZID}/saved_models/{MODEL}/entry", b'{"model_base_path": "/elsewhere"}')
        assert await recorder.declare(target) == [f"/{BZID}/saved_models/{MODEL}/entry"]
        assert ours._nodes == ctl._nodes
        v1 = RegistryRecorder(ours, "v1", declare_saved_models=False)
        assert await v1.declare(target) == []

    asyncio.run(scenario())


def test_rollout_state_is_written_through_the_phases_and_read_back_after_a_restart(tmp_path: Path) -> None:
    src = tmp_path / "src"
    discovery = FlakyDiscovery()
    cluster = FakeCluster(base_dir=str(tmp_path / "receive" / MODEL))

    async def scenario() -> None:
        await discovery.start()
        manager, model = make_manager(tmp_path, discovery, cluster, v3=True)
        publish(src, 1)
        await manager.step()
        assert model.state.serving == 1
        phases = [(w["phase"], w["target"]) for w in discovery.writes]
        assert phases[:4] == [("ps_loading", 1), ("entry_switching", 1), ("ps_cleanup", 1), ("idle", None)]
        assert all(f"/{BZID}/saved_models/{MODEL}/{sg}" in discovery._nodes for sg in ("entry", "ps_0", "ps_1"))

        publish(src, 2)
        cluster.broken.add(2)
        await manager.step()
        fingerprint = model.candidates[2].fingerprint
        state = saved(discovery)
        assert (state.serving, state.phase, state.target, state.failed) == (1, "idle", None, {2: fingerprint})
        assert state.last_rollout is not None and state.last_rollout["outcome"] == "failed"
        publish(src, 3)
        await manager.step()
        assert model.state.serving == 3
        pending = asyncio.ensure_future(manager.request_rollback(MODEL, 1))
        await asyncio.sleep(0)
        await manager.step()
        assert (await pending).outcome.value == "succeeded"
        assert saved(discovery).rollback_pin == RollbackPin(1, 3)

        # A new manager process (same registry and replicas): it neither retries 2 nor forgets the pin.
        cluster.broken.clear()
        writes = len(discovery.writes)
        restarted, model2 = make_manager(tmp_path, discovery, cluster, v3=True)
        reloads_of = {a: len(n.configs) for a, n in cluster.nodes.items()}
        await restarted.step()
        await restarted.step()
        assert model2.failed == {2: fingerprint} and model2.hold_floor == 3 and model2.pinned == 1
        assert model2.state.serving == 1  # adopted from the entries, not rolled forward
        # It only re-sends what serves (a new manager configures every replica once), never version 2 or 3.
        sent = [c.versions for n in cluster.nodes.values() for c in n.configs[reloads_of[n.replica.address] :]]
        assert sent and all(v == (1,) for v in sent), sent
        assert len(discovery.writes) == writes  # nothing changed, nothing rewritten
        publish(src, 4)  # above the pin: rolls out, and the spent pin is cleared
        await restarted.step()
        assert model2.state.serving == 4
        assert saved(discovery).rollback_pin is None and saved(discovery).failed == {2: fingerprint}
        assert cluster.violations == []

    asyncio.run(scenario())


def test_no_rollout_until_the_previous_state_is_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    discovery = FlakyDiscovery()
    cluster = FakeCluster(base_dir=str(tmp_path / "receive" / MODEL))

    async def scenario() -> None:
        await discovery.start()
        previous = RolloutState(MODEL, serving=None, failed={1: "whatever-it-was"})
        await discovery.set_persistent(STATE_PATH, previous.to_json())
        manager, model = make_manager(tmp_path, discovery, cluster)
        publish(src, 1)
        publish(src, 2)
        discovery.down = True
        await manager.step()
        assert not model.restored and model.state.serving is None
        assert all(not n.configs for n in cluster.nodes.values())  # nothing touched while the state is unknown
        discovery.down = False
        await manager.step()
        assert model.restored and model.state.serving == 2
        assert 1 in saved(discovery).failed  # the previous run's memory is kept, not overwritten

    asyncio.run(scenario())


DEEP_LIST = b"[" * 100_000  # any registry writer can create it; json.loads raises RecursionError


@pytest.mark.parametrize(
    "data",
    [
        DEEP_LIST,
        b'{"model": ' * 50_000,
        b"{bad",
        b"[]",
        b'{"serving": 1}',  # no model
        json.dumps({"model": MODEL, "serving": float("inf")}).encode(),  # Infinity: int() overflows
        json.dumps({"model": MODEL, "failed": {"x": "fp"}}).encode(),
        json.dumps({"model": MODEL, "rollback_pin": [1, 2]}).encode(),
        json.dumps({"model": MODEL, "last_rollout": [1]}).encode(),
    ],
    ids=lambda d: repr(d)[:40],
)
def test_a_malformed_saved_state_reads_as_none(data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        discovery = StaticDiscovery()
        await discovery.start()
        await discovery.set_persistent(STATE_PATH, data)
        assert await RegistryRecorder(discovery, BZID, declare_saved_models=False).load(MODEL) is None

    asyncio.run(scenario())
    assert "ignoring the saved rollout state" in caplog.text


def test_a_manager_whose_saved_state_and_declarations_are_deeply_nested_restores_and_rolls_out(tmp_path: Path) -> None:
    """Such a node used to make every restore raise (RecursionError): the model never rolled out."""
    src = tmp_path / "src"
    discovery = FlakyDiscovery()
    cluster = FakeCluster(base_dir=str(tmp_path / "receive" / MODEL))
    entry_decl = f"/{BZID}/saved_models/{MODEL}/entry"

    async def scenario() -> None:
        await discovery.start()
        await StaticDiscovery.set_persistent(discovery, STATE_PATH, DEEP_LIST)  # not into discovery.writes
        await discovery.set_persistent(entry_decl, DEEP_LIST)
        manager, model = make_manager(tmp_path, discovery, cluster, v3=True)
        publish(src, 1)
        await manager.step()
        assert model.restored and model.state.serving == 1
        assert saved(discovery).serving == 1  # the malformed state was replaced by a readable one
        assert json.loads(discovery._nodes[entry_decl])["version_policy"] == "latest"  # and re-declared
        assert cluster.violations == []

    asyncio.run(scenario())


def test_a_rollout_does_not_start_when_its_state_cannot_be_written(tmp_path: Path) -> None:
    src = tmp_path / "src"
    discovery = FlakyDiscovery()
    cluster = FakeCluster(base_dir=str(tmp_path / "receive" / MODEL))

    async def scenario() -> None:
        await discovery.start()
        manager, model = make_manager(tmp_path, discovery, cluster, v3=True)
        publish(src, 1)
        await manager.step()  # restored (nothing saved) and rolled out
        publish(src, 2)
        discovery.down = True
        await manager.step()
        assert model.state.serving == 1 and model.failed == {}
        assert all(2 not in c.versions for n in cluster.nodes.values() for c in n.configs)
        discovery.down = False
        await manager.step()
        assert model.state.serving == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("broken", ["ps", "entry"])
def test_a_failed_first_rollout_leaves_nothing_serving_anywhere(tmp_path: Path, broken: str) -> None:
    src = tmp_path / "src"
    discovery = FlakyDiscovery()
    cluster = FakeCluster(base_dir=str(tmp_path / "receive" / MODEL))
    if broken == "ps":
        cluster.broken.add(1)
    else:
        cluster.broken_entries["entry-1:1"] = {1}  # entry-0 switches to 1, entry-1 cannot load it

    async def scenario() -> None:
        await discovery.start()
        manager, model = make_manager(tmp_path, discovery, cluster)
        publish(src, 1)
        await manager.step()
        assert model.state.serving is None and 1 in model.failed
        for node in cluster.nodes.values():
            assert not any(s.state is VersionState.AVAILABLE for s in node.versions.values()), node
            if node.replica.kind is ServerKind.PS:
                last = node.configs[-1]
                assert last.versions == () and not last.drop  # specific {}: the PS unloads everything
            elif broken == "entry":
                assert node.configs[-1].drop and not node.hosting  # the entry stops hosting the model
            else:
                assert node.configs == []  # the PS phase failed: entries were never touched
        assert saved(discovery).failed == {1: model.candidates[1].fingerprint}
        reloads = sum(len(n.configs) for n in cluster.nodes.values())
        await manager.step()  # steady: nothing re-sent, 1 not retried
        assert sum(len(n.configs) for n in cluster.nodes.values()) == reloads
        cluster.broken.clear()
        cluster.broken_entries.clear()
        publish(src, 2)  # a dropped entry does not block the next rollout
        await manager.step()
        assert model.state.serving == 2 and cluster.serving(ServerKind.ENTRY) == {2}
        assert cluster.violations == []

    asyncio.run(scenario())


def test_a_drop_config_is_an_empty_model_list_the_entry_reads_as_no_model() -> None:
    request = reload_request([LoadConfig("entry", "/m/entry", (), drop=True)])
    assert request.config.WhichOneof("config") == "model_config_list"
    assert list(request.config.model_config_list.config) == []
    assert entry_config_from_proto(request.config, None) is None
    empty = reload_request([LoadConfig("ps_0", "/m/ps_0", ())])
    policy = empty.config.model_config_list.config[0].model_version_policy
    assert policy.WhichOneof("policy_choice") == "specific" and list(policy.specific.versions) == []


def test_a_manager_restarted_mid_rollout_decides_it_again_from_the_persisted_serving_version(tmp_path: Path) -> None:
    # The previous run died in the entry phase of 1 -> 2: entry-0 still serves 1 (it cannot load 2), entry-1
    # switched to 2, every PS holds both. The new run rolls 1 -> 2 again; its abort goes back to 1 everywhere
    # (not to "serve nothing", which a first rollout's abort would do).
    src = tmp_path / "src"
    discovery = FlakyDiscovery()
    cluster = FakeCluster(base_dir=str(tmp_path / "receive" / MODEL))
    for node in cluster.nodes.values():
        if node.replica.kind is ServerKind.PS:
            node.versions = {v: VersionStatus(v, VersionState.AVAILABLE) for v in (1, 2)}
    cluster.nodes["entry-0:1"].versions = {1: VersionStatus(1, VersionState.AVAILABLE)}
    cluster.nodes["entry-1:1"].versions = {2: VersionStatus(2, VersionState.AVAILABLE)}
    cluster.broken_entries["entry-0:1"] = {2}

    async def scenario() -> None:
        await discovery.start()
        previous = RolloutState(MODEL, serving=1, target=2, phase="entry_switching")
        await discovery.set_persistent(STATE_PATH, previous.to_json())
        manager, model = make_manager(tmp_path, discovery, cluster)
        publish(src, 1)
        publish(src, 2)
        await manager.step()
        record = model.state.last_rollout
        assert record is not None and (record.previous, record.version, record.outcome.value) == (1, 2, "failed")
        assert model.state.serving == 1 and 2 in model.failed
        assert cluster.serving(ServerKind.ENTRY) == {1} and cluster.serving(ServerKind.PS) == {1}
        ps_sent = [c.versions for c in cluster.nodes["ps0-0:1"].configs]
        assert ps_sent == [(1, 2), (1,)], ps_sent  # kept what the entries served, never specific {}
        assert saved(discovery).serving == 1 and cluster.violations == []

    asyncio.run(scenario())
