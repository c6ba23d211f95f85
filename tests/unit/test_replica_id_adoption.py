"""A replica without a replica id registers as Monolith's does (replica_manager.ReplicaUpdater.register): the entry
takes a sequential node ``entry:0/0<10-digit counter>`` and adopts its number, a PS / dense registers ``-1``; and
what reports the id (GetResource) reports the adopted one. Static backend and pure parts; the real ZooKeeper and
Consul behaviour is in tests/integration/test_discovery_zk.py and test_discovery_consul.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from monolith_serving.agent.v1_agent import ReplicaIdentity
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.zk_paths import UNSET_REPLICA_ID, ReplicaPath, ServerType
from monolith_serving.discovery.agent_servicer import AgentServiceServicer, int32_of
from monolith_serving.discovery.agent_view import ResourceSampler, WatcherReplicaView
from monolith_serving.discovery.replica_updater import LocalReplica, ReplicaUpdater, claim_entry_replica
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.discovery.static import StaticDiscovery
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2


def replica(kind: ServerType, replica_id: int, task: int = 0, **dc: str) -> LocalReplica:
    return LocalReplica(
        path=ReplicaPath("bz", "m", kind, task, replica_id, **dc),
        model_name="entry" if kind is ServerType.ENTRY else f"{kind.value}_{task}",
        address="10.0.0.1:9000",
    )


async def no_states(_replica: LocalReplica) -> Sequence[int]:
    return []


def test_static_sequential_nodes_number_each_parent_and_are_registrations() -> None:
    async def body() -> None:
        discovery = StaticDiscovery()
        await discovery.start()
        first = await discovery.register_ephemeral_sequential("/a/p/0", b"x")
        second = await discovery.register_ephemeral_sequential("/a/p/0", b"y")
        other_parent = await discovery.register_ephemeral_sequential("/a/q/n-", b"z")
        assert (first, second, other_parent) == ("/a/p/00000000000", "/a/p/00000000001", "/a/q/n-0000000000")
        await discovery.update_ephemeral(first, b"x2")  # a registration like any other
        assert await discovery.get_leaves("/a/p") == {first: b"x2", second: b"y"}
        await discovery.unregister(first)
        assert await discovery.register_ephemeral_sequential("/a/p/0", b"w") == "/a/p/00000000002"  # never reused
        await discovery.stop()
        assert await discovery.get_leaves("/a") == {}

    asyncio.run(body())


def test_an_entry_without_id_claims_a_sequential_node_and_adopts_its_number() -> None:
    async def body() -> None:
        discovery = StaticDiscovery()
        await discovery.start()
        first = await claim_entry_replica(discovery, replica(ServerType.ENTRY, UNSET_REPLICA_ID))
        second = await claim_entry_replica(discovery, replica(ServerType.ENTRY, UNSET_REPLICA_ID))
        assert (first.path.replica_id, second.path.replica_id) == (0, 1)
        assert first.path.path == "/bz/service/m/entry:0/00000000000"
        assert second.path.path == "/bz/service/m/entry:0/00000000001"
        nodes = await discovery.get_leaves("/bz/service/m/entry:0")
        assert set(nodes) == {first.path.path, second.path.path}
        meta = json.loads(nodes[second.path.path])
        assert (meta["replica"], meta["stat"], meta["server_type"]) == (1, ModelState.UNKNOWN, "entry")

        dc = await claim_entry_replica(discovery, replica(ServerType.ENTRY, UNSET_REPLICA_ID, idc="lf", cluster="c"))
        assert dc.path.path == "/bz/service/m/lf:c/entry:0/00000000000"

        # The entry's updater then registers the claimed path itself: still one node, updated in place.
        updater = ReplicaUpdater(discovery=discovery, replicas=[first], status_source=no_states, interval_s=60)
        await updater.start()
        assert set(await discovery.get_leaves("/bz/service/m/entry:0")) == {first.path.path, second.path.path}
        await updater.stop()
        assert set(await discovery.get_leaves("/bz/service/m/entry:0")) == {second.path.path}

    asyncio.run(body())


@pytest.mark.parametrize(
    "template",
    [replica(ServerType.ENTRY, 3), replica(ServerType.PS, UNSET_REPLICA_ID), replica(ServerType.DENSE, -1)],
    ids=["entry-with-id", "ps", "dense"],
)
def test_only_an_entry_without_id_claims(template: LocalReplica) -> None:
    async def body() -> None:
        discovery = StaticDiscovery()
        await discovery.start()
        with pytest.raises(ValueError, match="only an entry without a replica id"):
            await claim_entry_replica(discovery, template)
        assert await discovery.get_leaves("/") == {}

    asyncio.run(body())


def test_updater_registers_ps_and_dense_without_id_as_minus_one_but_never_an_entry() -> None:
    async def body() -> None:
        discovery = StaticDiscovery()
        await discovery.start()
        with pytest.raises(ValueError, match="claim_entry_replica"):
            ReplicaUpdater(
                discovery=discovery,
                replicas=[replica(ServerType.ENTRY, UNSET_REPLICA_ID)],
                status_source=no_states,
                interval_s=60,
            )
        ps_and_dense = [replica(ServerType.PS, -1, task=1), replica(ServerType.DENSE, -1)]
        async with ReplicaUpdater(discovery=discovery, replicas=ps_and_dense, status_source=no_states, interval_s=60):
            assert set(await discovery.get_leaves("/bz")) == {"/bz/service/m/ps:1/-1", "/bz/service/m/dense:0/-1"}

    asyncio.run(body())


@pytest.mark.parametrize(
    ("value", "wire"),
    [(0, 0), (-1, -1), (2**31 - 1, 2**31 - 1), (2**31, -(2**31)), (0xD24FB0D696, 0x4FB0D696), (2**40 - 1, -1)],
)
def test_int32_of_is_what_an_int32_reader_decodes(value: int, wire: int) -> None:
    assert int32_of(value) == wire
    # What protobuf itself makes of the full value: an int64 on the wire read back as an int32 field.
    as_int64 = agent_service_pb2.GetResourceResponse(memory=value).SerializeToString()
    resource_id = agent_service_pb2.GetResourceResponse.FromString(as_int64.replace(b"\x20", b"\x18", 1)).replica_id
    assert resource_id == wire


class _Context:
    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()


def test_get_resource_reports_the_adopted_replica_id() -> None:
    """GetResource's replica_id follows the identity: -1 until the entry adopted its number, that number after (a
    40-bit id from a pod name is sent as an int32 reader decodes it instead of failing the call)."""

    async def body() -> None:
        identity = ReplicaIdentity(UNSET_REPLICA_ID)
        sampler = ResourceSampler(address="h:1", shard_id=2, replica_id=identity.current, load_per_cpu=lambda: 0.0)
        watcher = ReplicaWatcher(discovery=StaticDiscovery(), bzid="bz", base_name="m")
        view = WatcherReplicaView(watcher, agent_version=1, base_name="m")
        servicer = AgentServiceServicer(view, sampler.sample)
        request = agent_service_pb2.GetResourceRequest()
        assert (await servicer.GetResource(request, _Context())).replica_id == -1
        identity.adopt(12)
        answer = await servicer.GetResource(request, _Context())
        assert (answer.replica_id, answer.shard_id, answer.address) == (12, 2, "h:1")
        with pytest.raises(ValueError, match="already"):
            identity.adopt(13)
        pod_named = ResourceSampler(address="h:1", replica_id=0xD24FB0D696, load_per_cpu=lambda: 0.0)
        big = await AgentServiceServicer(view, pod_named.sample).GetResource(request, _Context())
        assert big.replica_id == int32_of(0xD24FB0D696)

    asyncio.run(body())
