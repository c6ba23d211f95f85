"""The model manager knows a dense_alone model's ``dense_0`` servers: in its static list (``--dense_targets``),
in the v1 registry (``dense:0`` nodes) and the v3 one (``{model}:dense_0`` bindings), in its v3 declarations,
and it drives a real in-process dense server through the same ModelService calls as a PS."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from monolith_serving.agent.ctl import Controller
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.zk_paths import ReplicaPath, ServerType, binding_path, container_service_path
from monolith_serving.dense.config import DenseServerConfig
from monolith_serving.dense.server import DenseServer
from monolith_serving.discovery.replica_meta import ContainerServiceInfo, ReplicaMeta
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.discovery.static import StaticDiscovery
from monolith_serving.model_manager import main as manager_main
from monolith_serving.model_manager.control import LoadConfig, Replica, ServerKind, VersionState
from monolith_serving.model_manager.grpc_control import DiscoveryReplicaList, GrpcReplicaControl, StaticReplicaList
from monolith_serving.model_manager.registry_state import RegistryRecorder
from monolith_serving.model_manager.rollout import ModelTarget

BZID = "bz"
MODEL = "rank"
LOADING = 20


def test_the_static_list_holds_the_dense_targets_as_dense_0_replicas() -> None:
    listed = StaticReplicaList([["p0:1"], ["p1:1"]], ["e:1"], dense_targets=["d0:1", "d1:1"])
    assert listed.replicas(MODEL) == sorted(
        [
            Replica(ServerKind.PS, 0, "p0:1"),
            Replica(ServerKind.PS, 1, "p1:1"),
            Replica(ServerKind.DENSE, 0, "d0:1"),
            Replica(ServerKind.DENSE, 0, "d1:1"),
            Replica(ServerKind.ENTRY, 0, "e:1"),
        ]
    )
    dense = [r for r in listed.replicas("any model") if r.kind is ServerKind.DENSE]
    assert {r.sub_graph for r in dense} == {"dense_0"}
    assert all(r.kind is not ServerKind.DENSE for r in StaticReplicaList([["p0:1"]], ["e:1"]).replicas(MODEL))


def _v1_node(model: str, server_type: ServerType, task: int, replica_id: int, address: str) -> tuple[str, bytes]:
    path = ReplicaPath(BZID, model, server_type, task, replica_id)
    # LOADING: the manager lists replicas in any state (a loading one needs its config too).
    meta = ReplicaMeta(address=address, stat=LOADING, server_type=server_type.value, task=task, replica=replica_id)
    return path.path, meta.to_json()


async def _listed(nodes: dict[str, bytes], agent_version: int) -> list[Replica]:
    discovery = StaticDiscovery(nodes=nodes)
    await discovery.start()
    try:
        async with ReplicaWatcher(discovery=discovery, bzid=BZID, agent_version=agent_version) as watcher:
            assert await watcher.wait_synced(5.0)
            return DiscoveryReplicaList(watcher, agent_version=agent_version).replicas(MODEL)
    finally:
        await discovery.stop()


def test_v1_dense_0_nodes_of_the_model_are_dense_replicas() -> None:
    nodes = dict(
        [
            _v1_node(MODEL, ServerType.PS, 0, 0, "10.0.0.1:9000"),
            _v1_node(MODEL, ServerType.DENSE, 0, 0, "10.0.0.2:9000"),
            _v1_node(MODEL, ServerType.DENSE, 0, -1, "10.0.0.3:9000"),  # a dense server without a replica id
            _v1_node(MODEL, ServerType.ENTRY, 0, 0, "10.0.0.4:9000"),
            _v1_node("other", ServerType.DENSE, 0, 0, "10.0.0.5:9000"),  # another model's
        ]
    )
    assert asyncio.run(_listed(nodes, agent_version=1)) == sorted(
        [
            Replica(ServerKind.PS, 0, "10.0.0.1:9000"),
            Replica(ServerKind.DENSE, 0, "10.0.0.2:9000"),
            Replica(ServerKind.DENSE, 0, "10.0.0.3:9000"),
            Replica(ServerKind.ENTRY, 0, "10.0.0.4:9000"),
        ]
    )


def test_v3_dense_0_bindings_of_the_model_are_dense_replicas() -> None:
    containers = {"0": "10.0.1.1:8500", "1": "10.0.1.2:8500", "2": "10.0.1.3:8500", "3": "10.0.1.4:8500"}
    nodes = {
        container_service_path(BZID, "c", i): ContainerServiceInfo(grpc=a).to_json() for i, a in containers.items()
    }
    nodes |= {
        binding_path(BZID, MODEL, "ps_0", "c", "0"): b"",
        binding_path(BZID, MODEL, "dense_0", "c", "1"): b"",
        binding_path(BZID, MODEL, "dense_0", "c", "0"): b"",  # a unified container hosting ps_0 and dense_0
        binding_path(BZID, MODEL, "entry", "c", "2"): b"",
        binding_path(BZID, MODEL, "dense_1", "c", "3"): b"",  # not a sub_graph the manager rolls out
        binding_path(BZID, "other", "dense_0", "c", "3"): b"",  # another model's
    }
    assert asyncio.run(_listed(nodes, agent_version=3)) == sorted(
        [
            Replica(ServerKind.PS, 0, "10.0.1.1:8500"),
            Replica(ServerKind.DENSE, 0, "10.0.1.1:8500"),
            Replica(ServerKind.DENSE, 0, "10.0.1.2:8500"),
            Replica(ServerKind.ENTRY, 0, "10.0.1.3:8500"),
        ]
    )


def _parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    manager_main.configure(parser)
    return parser.parse_args(["run", "--model", MODEL, "--export_base", "/x", "--ps_targets", "p:1", *flags])


def test_dense_targets_flag_in_both_spellings() -> None:
    config = manager_main.run_config_from_args(_parse("--dense_targets", " d0:1, d1:2 ,"))
    assert config.dense_targets == ("d0:1", "d1:2")
    assert manager_main.run_config_from_args(_parse("--dense-targets=[::1]:3")).dense_targets == ("[::1]:3",)
    assert manager_main.run_config_from_args(_parse()).dense_targets == ()


@pytest.mark.parametrize(("value", "message"), [("d0", "not host:port"), ("d0:1;d1:1", "dense_0 only")])
def test_a_bad_dense_targets_value_is_refused(value: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        manager_main.run_config_from_args(_parse("--dense_targets", value))


def test_serve_lists_the_dense_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[Any, ...]] = []

    class Recording(StaticReplicaList):
        def __init__(self, *args: Any) -> None:
            made.append(args)
            super().__init__(*args)

    monkeypatch.setattr(manager_main, "StaticReplicaList", Recording)
    args = _parse("--dense_targets", "d0:1")
    args.export_base = str(tmp_path)  # empty: nothing to roll out
    config = manager_main.run_config_from_args(args)

    async def scenario() -> int:
        stop = asyncio.Event()
        stop.set()
        return await manager_main.serve(config, stop)

    assert asyncio.run(scenario()) == 0
    assert made == [((("p:1",),), (), ("d0:1",))]


def test_v3_declarations_include_dense_0_only_for_a_dense_target(tmp_path: Path) -> None:
    base = tmp_path / MODEL
    write_demo(DemoOptions(out=base, num_ps=2, rows=10, dense_alone=True))

    async def scenario() -> None:
        ours, ctl = StaticDiscovery(), StaticDiscovery()
        await ours.start()
        await ctl.start()
        await Controller(ctl, BZID).decl(base, model_name=MODEL)  # declares every sub_graph, dense_0 too
        recorder = RegistryRecorder(ours, BZID, declare_saved_models=True)
        dense_path = f"/{BZID}/saved_models/{MODEL}/dense_0"
        assert dense_path not in await recorder.declare(ModelTarget(MODEL, str(base), 2))
        assert dense_path not in ours._nodes
        written = await recorder.declare(ModelTarget(MODEL, str(base), 2, dense=True))
        assert written == [dense_path]  # entry and ps_i were declared already
        assert ours._nodes == ctl._nodes  # byte for byte what `ctl decl` writes
        assert await recorder.declare(ModelTarget(MODEL, str(base), 2, dense=True)) == []

    asyncio.run(scenario())


def test_a_dense_server_is_reloaded_and_polled_like_a_ps(tmp_path: Path) -> None:
    base = tmp_path / MODEL
    for version in (1, 2):
        write_demo(DemoOptions(out=base, num_ps=1, rows=10, dense_alone=True, version=version))
    dense_base = str(base / "dense_0")

    async def scenario() -> None:
        # No models until the manager's first reload, as a replica the manager drives starts.
        server = DenseServer(DenseServerConfig(port=0, host="127.0.0.1", models_from_reload=True))
        async with server:
            listed = StaticReplicaList([], [], dense_targets=[f"127.0.0.1:{server.port}"])
            control = GrpcReplicaControl(listed)
            try:
                (replica,) = control.replicas(MODEL)
                assert replica.kind is ServerKind.DENSE
                for versions in ((1,), (1, 2), (2,)):  # what a rollout from 1 to 2 sends
                    config = LoadConfig(replica.sub_graph, dense_base, versions)
                    await control.reload(replica.address, [config], timeout_s=30)
                    statuses = await control.status(replica, replica.sub_graph, timeout_s=5)
                    available = {s.version for s in statuses if s.state is VersionState.AVAILABLE}
                    assert available == set(versions)
            finally:
                await control.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ((), "--ps_targets"),
        (("--entry_targets", "e:1", "--dense_targets", "d:1"), "--ps_targets, --entry_targets, --dense_targets"),
    ],
)
def test_static_targets_with_a_registry_are_refused_rather_than_ignored(flags: tuple[str, ...], named: str) -> None:
    args = _parse("--zk_servers", "127.0.0.1:2181", "--bzid", "b", *flags)
    with pytest.raises(InvalidArgumentError, match="with --zk_servers the replicas come from the registry") as error:
        manager_main.run_config_from_args(args)
    assert error.value.message.startswith(f"{named} name static replicas")
