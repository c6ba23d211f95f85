"""Pure parts of the discovery package: node formats, leaf/diff logic, config, static backend."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from monolith_serving.agent.saved_model_decl import SavedModelDecl
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.zk_paths import ReplicaPath, ServerType
from monolith_serving.discovery import Backend, DiscoveryConfig, EventKind, ModelState, ReplicaMeta, WatchEvent
from monolith_serving.discovery.base import SubtreeDiffer, leaves_of, normalize_path
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.node_data import MAX_NODE_DATA_BYTES, MAX_NODE_DATA_DEPTH, load_json_object
from monolith_serving.discovery.replica_meta import ContainerServiceInfo
from monolith_serving.discovery.replica_updater import LocalReplica, ReplicaUpdater, choose_state
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.discovery.static import StaticDiscovery

# ------------------------------------------------------------------------------------------ formats

META_KEYS = {
    "address",
    "address_ipv6",
    "stat",
    "model_name",
    "server_type",
    "task",
    "replica",
    "archon_address",
    "archon_address_ipv6",
}


def test_replica_meta_round_trips_with_exact_keys() -> None:
    meta = ReplicaMeta(address="h:1", stat=30, model_name="ps_0", server_type="ps", task=0, replica=2)
    assert set(json.loads(meta.to_json())) == META_KEYS
    assert ReplicaMeta.from_json(meta.to_json()) == meta
    assert meta.available and not ReplicaMeta(stat=20).available


def test_replica_meta_tolerates_unknown_keys_and_nulls() -> None:
    meta = ReplicaMeta.from_json(b'{"address": "h:1", "stat": 30, "address_ipv6": null, "extra": {"a": 1}}')
    assert meta.address == "h:1" and meta.stat == 30 and meta.address_ipv6 is None and meta.task == -1


@pytest.mark.parametrize(
    "data",
    [b"", b"{oops", b"[1]", b'"s"', b'{"stat": "30"}', b'{"stat": true}', b'{"address": 1}', b"\xff\xfe"],
)
def test_replica_meta_rejects_malformed_data(data: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        ReplicaMeta.from_json(data)


# Node data any registry writer can create (ZooKeeper allows 1 MB): json.loads raises RecursionError on it.
DEEP_LIST = b"[" * 100_000


def nested(depth: int) -> bytes:
    """A JSON object whose containers nest ``depth`` levels (the object itself is level 1)."""
    return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize(
    "data",
    [
        DEEP_LIST,
        b'{"a": ' * 50_000,
        b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",  # parses, but nests far too deep to pass on
        nested(MAX_NODE_DATA_DEPTH + 1),
        b'{"a": "' + b"x" * MAX_NODE_DATA_BYTES + b'"}',
        b'{"a": ' + b"9" * 5_000 + b"}",  # beyond Python's int-from-text digit limit (ValueError)
        b"",
        b"{oops",
        b"\xff\xfe",
        b"[1]",
        b"null",
        b'"s"',
        b"30",
        None,
        30,
        ["{}"],
    ],
    ids=lambda d: repr(d)[:30],
)
def test_node_data_decoding_reports_every_malformed_input_as_invalid_argument(data: object) -> None:
    with pytest.raises(InvalidArgumentError, match="^thing: "):
        load_json_object(data, "thing")


def test_node_data_decoding_accepts_objects_up_to_the_limits() -> None:
    assert load_json_object(b'{"a": [1, {"b": null}], "c": "\\u00e9"}', "thing") == {
        "a": [1, {"b": None}],
        "c": "\u00e9",
    }
    assert load_json_object('{"a": 1}', "thing") == {"a": 1}
    assert load_json_object(bytearray(b"{}"), "thing") == {}
    assert load_json_object(b"\xef\xbb\xbf{}", "thing") == {}  # json.loads of bytes skips a UTF-8 BOM
    assert load_json_object(nested(MAX_NODE_DATA_DEPTH), "thing")
    padded = b'{"a": "' + b"x" * (MAX_NODE_DATA_BYTES - 9) + b'"}'
    assert len(padded) == MAX_NODE_DATA_BYTES and load_json_object(padded, "thing")


@pytest.mark.parametrize("data", [DEEP_LIST, b'{"a": ' * 50_000, nested(MAX_NODE_DATA_DEPTH + 1)])
def test_every_node_format_reads_deeply_nested_data_as_malformed(data: bytes) -> None:
    for parse in (ReplicaMeta.from_json, ContainerServiceInfo.from_json, SavedModelDecl.from_json):
        with pytest.raises(InvalidArgumentError):
            parse(data)


def test_saved_model_declarations_read_as_monoliths_v3_agent_reads_them() -> None:
    # Its gen_model_config lower-cases the policy and, with the default version data, makes specific version 1.
    latest = SavedModelDecl.from_json(b'{"model_base_path": "/e/ps_0", "version_policy": "LATEST"}')
    assert latest.policy == VersionPolicy(PolicyKind.LATEST)
    specific = SavedModelDecl.from_json(b'{"model_base_path": "/e/ps_0", "version_policy": "Specific"}')
    assert specific.policy == VersionPolicy(PolicyKind.SPECIFIC, versions=(1,))
    with pytest.raises(InvalidArgumentError, match="version_policy 'newest'"):
        SavedModelDecl.from_json(b'{"model_base_path": "/e/ps_0", "version_policy": "newest"}')


def test_container_service_info_keys_and_types() -> None:
    info = ContainerServiceInfo(grpc="h:1", http="h:2", archon="h:3", agent="h:4", idc="lf", debug_info="x")
    assert set(json.loads(info.to_json())) == {"grpc", "http", "archon", "agent", "idc", "debug_info"}
    assert ContainerServiceInfo.from_json(info.to_json()) == info
    assert ContainerServiceInfo.from_json(b'{"grpc": "h:1", "debug_info": {"k": 1}}').debug_info == '{"k": 1}'
    with pytest.raises(InvalidArgumentError):
        ContainerServiceInfo.from_json(b'{"grpc": 5}')


@pytest.mark.parametrize(
    ("states", "chosen"),
    [
        ([], ModelState.UNKNOWN),
        ([ModelState.LOADING], ModelState.LOADING),
        ([ModelState.AVAILABLE, ModelState.LOADING], ModelState.AVAILABLE),
        ([ModelState.END, ModelState.AVAILABLE], ModelState.AVAILABLE),
        ([ModelState.END, ModelState.LOADING], ModelState.LOADING),
    ],
)
def test_choose_state_prefers_available_then_newest(states: list[int], chosen: int) -> None:
    assert choose_state(states) == chosen


# ------------------------------------------------------------------------------------------ tree logic


def test_leaves_of_with_and_without_intermediate_nodes() -> None:
    zk_like = {"/r/a": b"", "/r/a/x": b"1", "/r/b": b"2", "/r/a/y": b"", "/r/a/y/z": b"3"}
    assert leaves_of(zk_like, "/r") == {"/r/a/x": b"1", "/r/b": b"2", "/r/a/y/z": b"3"}
    kv_like = {"/r/a/x": b"1", "/r/a": b"v", "/r/q/w/e": b"4", "/other/k": b"5", "/r": b"root"}
    assert leaves_of(kv_like, "/r") == {"/r/a/x": b"1", "/r/q/w/e": b"4"}


def test_subtree_differ_emits_add_change_remove_and_survives_bad_listener() -> None:
    events: list[WatchEvent] = []
    calls = 0

    def listener(event: WatchEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("listener bug")  # logged, must not stop later events
        events.append(event)

    differ = SubtreeDiffer(listener)
    differ.apply({"/a": b"1", "/b": b"2"})
    differ.apply({"/a": b"1", "/b": b"3", "/c": b"4"})
    differ.apply({"/c": b"4"})
    assert calls == 6
    assert events == [
        WatchEvent(EventKind.ADDED, "/b", b"2"),
        WatchEvent(EventKind.CHANGED, "/b", b"3"),
        WatchEvent(EventKind.ADDED, "/c", b"4"),
        WatchEvent(EventKind.REMOVED, "/a", b"1"),
        WatchEvent(EventKind.REMOVED, "/b", b"3"),
    ]


def test_normalize_path() -> None:
    assert normalize_path("/a/b/") == "/a/b"
    for bad in ("a/b", "/a//b"):
        with pytest.raises(ValueError):
            normalize_path(bad)


# ------------------------------------------------------------------------------------------ config


def test_discovery_config_validation_and_consul_address() -> None:
    with pytest.raises(ValueError, match="zk_servers"):
        DiscoveryConfig(backend=Backend.ZOOKEEPER)
    with pytest.raises(ValueError, match="10 s"):
        DiscoveryConfig(backend=Backend.CONSUL, session_timeout_s=5)
    cfg = DiscoveryConfig.consul_from_address("https://consul.local:8501", session_timeout_s=15)
    assert (cfg.consul_scheme, cfg.consul_host, cfg.consul_port) == ("https", "consul.local", 8501)
    assert DiscoveryConfig.consul_from_address("127.0.0.1:8500").consul_scheme == "http"


# ------------------------------------------------------------------------------------------ static backend


def test_static_backend_from_file_and_watcher_view(tmp_path: Path) -> None:
    meta = {"address": "10.0.0.1:9", "stat": 30, "server_type": "ps", "task": 0, "replica": 1}
    seed = tmp_path / "nodes.json"
    seed.write_text(json.dumps({"/bz/service/m/ps:0/1": meta, "/bz/service/m/ps:1/1": "{bad"}))
    config = DiscoveryConfig(backend=Backend.STATIC, static_file=str(seed))

    async def body() -> None:
        async with StaticDiscovery(config) as disc:
            assert await disc.get_children("/bz/service/m") == ["ps:0", "ps:1"]
            assert await disc.get_data("/bz/service/m") == b""
            assert await disc.get_data("/nope") is None
            async with ReplicaWatcher(discovery=disc, bzid="bz", base_name="m") as watcher:
                assert await watcher.wait_synced(1)
                assert watcher.get_all_replicas() == {"ps:0": ["10.0.0.1:9"]}
                replica = LocalReplica(
                    path=ReplicaPath(bzid="bz", base_name="m", server_type=ServerType.ENTRY, task=0, replica_id=5),
                    model_name="entry",
                    address="10.0.0.2:9",
                )
                states: Sequence[int] = [ModelState.AVAILABLE]

                async def status(_: LocalReplica) -> Sequence[int]:
                    return states

                async with ReplicaUpdater(discovery=disc, replicas=[replica], status_source=status, interval_s=0.01):
                    assert await disc.get_children("/bz/service/m/entry:0") == ["00000000005"]
                    assert await watcher.wait_until_available("entry", [0], timeout_s=2)
                    assert watcher.get_replicas(ServerType.ENTRY, 0) == ["10.0.0.2:9"]
                await asyncio.sleep(0.01)  # the removal is delivered on the next loop iteration
                assert watcher.get_replicas(ServerType.ENTRY, 0) == []
                assert not await watcher.wait_until_available("entry", [0], timeout_s=0.05)

    asyncio.run(body())


def test_discovery_config_from_agent_conf() -> None:
    from monolith_serving.core.agent_conf import AgentConfig, DeployType, DiscoveryKind
    from monolith_serving.discovery.config import discovery_config_from_agent

    zk = AgentConfig(deploy_type=DeployType.PS, discovery=DiscoveryKind.ZK, zk_servers="h1:2181,h2:2181")
    assert discovery_config_from_agent(zk) == DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers="h1:2181,h2:2181")
    cons = AgentConfig(deploy_type=DeployType.PS, discovery=DiscoveryKind.CONSUL, consul_address="c:8500")
    got = discovery_config_from_agent(cons)
    assert (got.backend, got.consul_host, got.consul_port) == (Backend.CONSUL, "c", 8500)
    assert discovery_config_from_agent(AgentConfig(deploy_type=DeployType.PS)).backend is Backend.STATIC


def test_watcher_resync_keeps_good_nodes_next_to_malformed_ones(caplog: pytest.LogCaptureFixture) -> None:
    def meta(task: int, address: str) -> bytes:
        return ReplicaMeta(address=address, stat=30, server_type="ps", task=task, replica=1).to_json()

    # Malformed nodes sort before, between and after the good ones (a resync used to stop at the first).
    nodes = {
        "/bz/service/m/ps:0/0": DEEP_LIST,
        "/bz/service/m/ps:0/1": meta(0, "10.0.0.1:9"),
        "/bz/service/m/ps:0/2": b'{"a": ' * 50_000,
        "/bz/service/m/ps:1/1": meta(1, "10.0.0.2:9"),
        "/bz/service/m/ps:1/2": b"{bad",
        "/bz/service/m/ps:2/1": meta(2, "10.0.0.3:9"),
        "/bz/service/m/ps:2/9": DEEP_LIST,
    }
    good = {"ps:0": ["10.0.0.1:9"], "ps:1": ["10.0.0.2:9"], "ps:2": ["10.0.0.3:9"]}
    metrics = DiscoveryMetrics()

    def malformed_count() -> float:
        return metrics.registry.get_sample_value("discovery_malformed_nodes_total", {"kind": "replica"}) or 0.0

    async def body() -> None:
        async with StaticDiscovery(nodes=nodes) as disc:
            watcher = ReplicaWatcher(discovery=disc, bzid="bz", base_name="m", resync_interval_s=3600, metrics=metrics)
            async with watcher:
                assert await watcher.wait_synced(1)
                await asyncio.sleep(0.01)
                assert watcher.get_all_replicas() == good
                for _ in range(3):
                    await watcher.resync()
                    assert watcher.get_all_replicas() == good
                # Each malformed node is logged and counted once, however often a resync re-reads it.
                warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "skipping" in r.message]
                assert len(warnings) == 4 and malformed_count() == 4
                # New content of a malformed node is reported again; a watch event for it drops only it.
                await disc.set_persistent("/bz/service/m/ps:1/1", DEEP_LIST)
                await asyncio.sleep(0.01)
                assert watcher.get_all_replicas() == {"ps:0": ["10.0.0.1:9"], "ps:2": ["10.0.0.3:9"]}
                assert malformed_count() == 5
                await disc.set_persistent("/bz/service/m/ps:1/1", meta(1, "10.0.0.2:9"))
                await watcher.resync()
                assert watcher.get_all_replicas() == good

    with caplog.at_level(logging.WARNING, logger="monolith_serving.discovery.replica_watcher"):
        asyncio.run(body())


def test_watcher_resync_keeps_good_v3_containers_next_to_malformed_ones() -> None:
    nodes = {
        "/bz/binding/m/entry:c:1": b"",
        "/bz/binding/m/entry:c:2": b"",
        "/bz/binding/m/ps_0:c:3": b"",
        "/bz/container_service/c:1": DEEP_LIST,
        "/bz/container_service/c:2": ContainerServiceInfo(grpc="10.0.0.2:9").to_json(),
        "/bz/container_service/c:3": ContainerServiceInfo(grpc="10.0.0.3:9").to_json(),
        "/bz/container_service/bad-name": DEEP_LIST,
    }

    async def body() -> None:
        disc = StaticDiscovery(nodes=nodes)
        watcher = ReplicaWatcher(discovery=disc, bzid="bz", agent_version=3, resync_interval_s=3600)
        async with disc, watcher:
            assert await watcher.wait_synced(1)
            await watcher.resync()
            assert watcher.get_all_v3_replicas() == {"m:entry": ["10.0.0.2:9"], "m:ps_0": ["10.0.0.3:9"]}

    asyncio.run(body())


def test_v3_cluster_filter_reads_the_cluster_part_of_monolith_container_names() -> None:
    """Monolith's containers are ``{psm};{idc};{cluster}:{id}``; a dc_aware reader filters on the cluster part."""
    nodes = {
        "/bz/binding/m/ps_0:svc;lf;blue:pod-a": b"",
        "/bz/binding/m/ps_0:svc;lf;green:pod-b": b"",
        "/bz/binding/m/ps_0:blue:old-style": b"",
        "/bz/container_service/svc;lf;blue:pod-a": ContainerServiceInfo(grpc="10.0.0.1:9", idc="lf").to_json(),
        "/bz/container_service/svc;lf;green:pod-b": ContainerServiceInfo(grpc="10.0.0.2:9", idc="lf").to_json(),
        "/bz/container_service/blue:old-style": ContainerServiceInfo(grpc="10.0.0.3:9", idc="lf").to_json(),
    }

    async def body() -> None:
        disc = StaticDiscovery(nodes=nodes)
        watcher = ReplicaWatcher(discovery=disc, bzid="bz", agent_version=3, resync_interval_s=3600)
        async with disc, watcher:
            assert await watcher.wait_synced(1)
            assert watcher.get_all_v3_replicas(cluster="blue") == {"m:ps_0": ["10.0.0.1:9", "10.0.0.3:9"]}
            assert watcher.get_v3_replicas("m", "ps_0", idc="lf", cluster="green") == ["10.0.0.2:9"]

    asyncio.run(body())


def test_a_node_that_breaks_the_watcher_unexpectedly_costs_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a bug (an error that is not InvalidArgumentError) for one node leaves the rest of a resync intact."""
    parse = ReplicaMeta.from_json

    def buggy(data: bytes | str) -> ReplicaMeta:
        if b"boom" in (data if isinstance(data, bytes) else data.encode()):
            raise RuntimeError("parser bug")
        return parse(data)

    monkeypatch.setattr(ReplicaMeta, "from_json", staticmethod(buggy))
    ok = ReplicaMeta(address="10.0.0.1:9", stat=30).to_json()
    nodes = {"/bz/service/m/ps:0/0": b'{"boom": 1}', "/bz/service/m/ps:0/1": ok, "/bz/service/m/ps:1/1": ok}

    async def body() -> None:
        disc = StaticDiscovery(nodes=nodes)
        watcher = ReplicaWatcher(discovery=disc, bzid="bz", base_name="m", resync_interval_s=3600)
        async with disc, watcher:
            assert await watcher.wait_synced(1)
            await watcher.resync()
            assert watcher.get_all_replicas() == {"ps:0": ["10.0.0.1:9"], "ps:1": ["10.0.0.1:9"]}

    asyncio.run(body())


def test_an_unanswering_replica_is_logged_when_its_state_changes_not_every_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = DiscoveryConfig(backend=Backend.STATIC, static_file=str(tmp_path / "nodes.json"))
    (tmp_path / "nodes.json").write_text("{}")
    replica = LocalReplica(
        path=ReplicaPath(bzid="bz", base_name="m", server_type=ServerType.PS, task=0, replica_id=1),
        model_name="ps_0",
        address="10.0.0.3:9",
    )
    answers: list[Exception | None] = []

    async def status(_: LocalReplica) -> Sequence[int]:
        error = answers.pop(0)
        if error is not None:
            raise error
        return [ModelState.AVAILABLE]

    async def body() -> None:
        async with StaticDiscovery(config) as disc:
            answers.extend([None, None, *[TimeoutError("status call timed out")] * 5, None, TimeoutError("again")])
            # A long interval: the loop's first poll (at entry) takes one answer, then only these polls run.
            async with ReplicaUpdater(discovery=disc, replicas=[replica], status_source=status, interval_s=60) as up:
                with caplog.at_level(logging.WARNING, logger="monolith_serving.discovery.replica_updater"):
                    while answers:
                        await up.poll_once()
            lines = [r.getMessage() for r in caplog.records]
            assert lines == [
                "status of ps_0 unavailable: TimeoutError: status call timed out",
                "status of ps_0 unavailable: TimeoutError: again",
            ]

    asyncio.run(body())
