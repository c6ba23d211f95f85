"""Replica-manager core without the network: eviction bookkeeping, the cluster view, GetResource memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.zk_paths import (
    ReplicaPath,
    ServerType,
    binding_path,
    container_service_path,
)
from monolith_serving.discovery.agent_view import (
    ResourceSampler,
    WatcherReplicaView,
    read_mem_available_bytes,
    sub_graph_matches,
    sub_graph_of,
    task_of_sub_graph,
)
from monolith_serving.discovery.replica_meta import ContainerServiceInfo, ReplicaMeta
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.discovery.static import StaticDiscovery
from monolith_serving.replica_manager.cluster_view import ClusterView
from monolith_serving.replica_manager.probe_state import ReplicaProbeStateManager
from monolith_serving.replica_manager.prober import ProbeResult, ProbeTarget

BZID = "bz"


class ScriptedProbe:
    """Answers from a mutable set of healthy addresses and counts calls."""

    def __init__(self) -> None:
        self.healthy: set[str] = set()
        self.calls = 0

    async def __call__(self, target: ProbeTarget) -> ProbeResult:
        self.calls += 1
        if target.address in self.healthy:
            return ProbeResult(healthy=True, version=7)
        return ProbeResult(healthy=False, error="refused")


def test_eviction_after_consecutive_failures_and_readmission() -> None:
    probe = ScriptedProbe()
    transitions: list[tuple[str, bool]] = []
    manager = ReplicaProbeStateManager(
        probe=probe, failures_to_evict=2, on_transition=lambda t, e: transitions.append((t.address, e))
    )
    a, b = ProbeTarget("a:1", "ps_0"), ProbeTarget("b:1", "ps_0")
    probe.healthy = {"a:1", "b:1"}

    async def rounds() -> None:
        await manager.update([a, b])
        assert not manager.is_evicted(a)
        probe.healthy = {"b:1"}
        await manager.update([a, b])
        assert not manager.is_evicted(a), "one failure must not evict"
        await manager.update([a, b])
        assert manager.is_evicted(a) and not manager.is_evicted(b)
        await manager.update([a, b])  # still down: no second eviction
        probe.healthy = {"a:1", "b:1"}
        await manager.update([a, b])
        assert not manager.is_evicted(a)
        record = manager.record(a)
        assert record is not None and record.version == 7 and record.failures == 0
        await manager.update([b])  # a is no longer registered: forgotten
        assert manager.record(a) is None

    asyncio.run(rounds())
    assert transitions == [("a:1", True), ("a:1", False)]


def test_a_raising_probe_counts_as_a_failure_and_does_not_stop_others() -> None:
    async def probe(target: ProbeTarget) -> ProbeResult:
        if target.address == "bad:1":
            raise RuntimeError("boom")
        return ProbeResult(healthy=True)

    manager = ReplicaProbeStateManager(probe=probe, failures_to_evict=1)
    bad, good = ProbeTarget("bad:1"), ProbeTarget("good:1")
    asyncio.run(manager.update([bad, good]))
    assert manager.is_evicted(bad) and not manager.is_evicted(good)


def test_a_probe_cut_off_by_cancelled_error_counts_as_a_failure() -> None:
    # gRPC raises CancelledError in a call whose channel was closed under it, though nobody cancelled the task.
    async def probe(target: ProbeTarget) -> ProbeResult:
        if target.address == "cut:1":
            raise asyncio.CancelledError
        return ProbeResult(healthy=True)

    manager = ReplicaProbeStateManager(probe=probe, failures_to_evict=1)
    cut, good = ProbeTarget("cut:1"), ProbeTarget("good:1")
    asyncio.run(manager.update([cut, good]))
    assert manager.is_evicted(cut) and not manager.is_evicted(good)
    record = manager.record(cut)
    assert record is not None and record.last_error is not None and "CancelledError" in record.last_error


def test_cancelling_a_round_still_propagates() -> None:
    async def cancel_mid_round() -> ReplicaProbeStateManager:
        started, never = asyncio.Event(), asyncio.Event()

        async def probe(target: ProbeTarget) -> ProbeResult:
            started.set()
            await never.wait()
            return ProbeResult(healthy=True)

        manager = ReplicaProbeStateManager(probe=probe, failures_to_evict=1)
        round_task = asyncio.create_task(manager.update([ProbeTarget("slow:1")]))
        await asyncio.wait_for(started.wait(), timeout=5)
        round_task.cancel()  # what stop() does
        with pytest.raises(asyncio.CancelledError):
            await round_task
        return manager

    manager = asyncio.run(cancel_mid_round())
    assert manager.record(ProbeTarget("slow:1")) is None, "a cancelled round applies nothing"


def _replica(model: str, kind: ServerType, task: int, replica: int, address: str, stat: int = 30) -> tuple[str, bytes]:
    path = ReplicaPath(bzid=BZID, base_name=model, server_type=kind, task=task, replica_id=replica)
    meta = ReplicaMeta(address=address, stat=stat, model_name=sub_graph_of(kind, task), server_type=kind.value,
                       task=task, replica=replica)  # fmt: skip
    return path.path, meta.to_json()


def _nodes() -> dict[str, bytes]:
    nodes = dict(
        [
            _replica("m1", ServerType.PS, 0, 1, "h:1"),
            _replica("m1", ServerType.PS, 0, 2, "h:2"),
            _replica("m1", ServerType.PS, 1, 1, "h:3", stat=ModelState.LOADING),
            _replica("m1", ServerType.ENTRY, 0, 5, "h:4"),
            _replica("m2", ServerType.PS, 0, 1, "h:9"),
        ]
    )
    nodes[binding_path(BZID, "m3", "ps_0", "c1", "7")] = b""
    nodes[container_service_path(BZID, "c1", "7")] = ContainerServiceInfo(grpc="h:30", idc="lf").to_json()
    return nodes


async def _cluster(probes: ReplicaProbeStateManager | None) -> tuple[ClusterView, ReplicaWatcher]:
    discovery = StaticDiscovery(nodes=_nodes())
    await discovery.start()
    v1 = ReplicaWatcher(discovery=discovery, bzid=BZID, agent_version=1)
    v3 = ReplicaWatcher(discovery=discovery, bzid=BZID, agent_version=3)
    await v1.resync()
    await v3.resync()
    return ClusterView(v1=v1, v3=v3, probes=probes), v1


def test_cluster_view_answers_per_model_and_drops_evicted_replicas() -> None:
    probe = ScriptedProbe()
    probe.healthy = {"h:1", "h:4", "h:9", "h:30"}  # h:2 is dead
    manager = ReplicaProbeStateManager(probe=probe, failures_to_evict=1)

    async def check() -> None:
        view, _ = await _cluster(manager)
        assert view.get_replicas(ServerType.PS, 0, "m1") == ["h:1", "h:2"]
        targets = view.probe_targets()
        assert ProbeTarget("h:3", "ps_1") not in targets, "LOADING replicas are not routable, so not probed"
        assert ProbeTarget("h:30") in targets
        await manager.update(targets)
        assert view.get_replicas(ServerType.PS, 0, "m1") == ["h:1"]
        assert view.get_replicas(ServerType.PS, 0, "m2") == ["h:9"]
        assert view.get_replicas(ServerType.PS, 0, "m3") == ["h:30"]  # v3: sub_graph ps_0
        assert view.heartbeat(ServerType.PS, "m1") == {"ps:0": ["h:1"]}
        assert view.heartbeat(ServerType.ENTRY, "m1") == {"entry:0": ["h:4"]}
        assert view.heartbeat(ServerType.PS, "m3") == {"m3:ps_0": ["h:30"]}
        with pytest.raises(InvalidArgumentError, match="model_name"):
            view.heartbeat(ServerType.PS, "")  # two v1 models: ambiguous
        with pytest.raises(InvalidArgumentError, match="model_name"):
            view.get_replicas(ServerType.PS, 0, "")
        assert view.availability() == {
            ("m1", "ps_0", "0"): 1,
            ("m1", "ps_1", "1"): 0,
            ("m1", "entry", "0"): 1,
            ("m2", "ps_0", "0"): 1,
            ("m3", "ps_0", "0"): 1,
        }

    asyncio.run(check())


def test_watcher_view_defaults_to_base_name_and_filters_v3_by_type() -> None:
    async def check() -> None:
        _, v1 = await _cluster(None)
        view = WatcherReplicaView(v1, agent_version=1, base_name="m1")
        assert view.get_replicas(ServerType.PS, 0, "") == ["h:1", "h:2"]
        # ps:1 has a replica, LOADING: its key is there with no address (as Monolith's v1 HeartBeat answers).
        assert view.heartbeat(ServerType.PS, "") == {"ps:0": ["h:1", "h:2"], "ps:1": []}
        assert view.heartbeat(ServerType.PS, "m2") == {"ps:0": ["h:9"]}

    asyncio.run(check())


def test_sub_graph_mapping() -> None:
    assert sub_graph_of(ServerType.ENTRY, 0) == "entry"
    assert sub_graph_of(ServerType.PS, 3) == "ps_3"
    assert task_of_sub_graph("ps_12") == 12 and task_of_sub_graph("entry") == 0
    assert sub_graph_matches("ps_1", ServerType.PS) and not sub_graph_matches("entry", ServerType.PS)


def test_mem_available_is_read_in_bytes(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000 kB\nMemFree:   100 kB\nMemAvailable:    2048 kB\n")
    assert read_mem_available_bytes(meminfo) == 2048 * 1024
    assert read_mem_available_bytes(tmp_path / "missing") == 0
    sample = ResourceSampler(
        address="h:1", shard_id=2, replica_id=3, meminfo=meminfo, load_per_cpu=lambda: 0.5
    ).sample()
    assert (sample.address, sample.shard_id, sample.replica_id, sample.memory_bytes) == ("h:1", 2, 3, 2048 * 1024)
    assert sample.cpu == 0.5 and sample.work_load == 0.5


def test_flags_override_agent_conf(tmp_path: Path) -> None:
    import argparse

    from monolith_serving.replica_manager.main import config_from_args, configure

    conf = tmp_path / "agent.conf"
    conf.write_text(
        "bzid conf_bz\nbase_name m\nbase_path /tmp/m\ndeploy_type ps\nzk_servers conf-zk:2181\nagent_port 7001\n"
    )
    parser = argparse.ArgumentParser()
    configure(parser)
    from_conf = config_from_args(parser.parse_args(["--conf", str(conf)]), {})
    assert (from_conf.bzid, from_conf.discovery.zk_servers, from_conf.port) == ("conf_bz", "conf-zk:2181", 7001)
    overridden = config_from_args(
        parser.parse_args(["--conf", str(conf), "--bzid", "b2", "--zk", "flag-zk:1", "--port", "7002"]), {}
    )
    assert (overridden.bzid, overridden.discovery.zk_servers, overridden.port) == ("b2", "flag-zk:1", 7002)
    assert overridden.probe_timeout_s <= overridden.probe_interval_s
    with pytest.raises(InvalidArgumentError, match="bzid"):
        config_from_args(parser.parse_args(["--zk", "z:1"]), {})
