"""AgentService over real gRPC, served from ReplicaWatcher views of a real ZooKeeper tree."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from zk_harness import ZooKeeperServer

from monolith_serving.core.grpc_server import GrpcServerOptions, build_server
from monolith_serving.core.zk_paths import ReplicaPath, ServerType, binding_path, container_service_path
from monolith_serving.discovery import Backend, DiscoveryConfig, ReplicaMeta, create_discovery
from monolith_serving.discovery.agent_servicer import AgentServiceServicer, add_agent_service
from monolith_serving.discovery.agent_view import ResourceSampler, WatcherReplicaView, read_mem_available_bytes
from monolith_serving.discovery.replica_meta import ContainerServiceInfo
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _meta(kind: ServerType, task: int, replica: int, address: str, stat: int = 30) -> bytes:
    name = "entry" if kind is ServerType.ENTRY else f"{kind.value}_{task}"
    return ReplicaMeta(
        address=address, stat=stat, model_name=name, server_type=kind.value, task=task, replica=replica
    ).to_json()


@asynccontextmanager
async def agent_service(
    zk_server: ZooKeeperServer, bzid: str, agent_version: int, base_name: str | None
) -> AsyncIterator[agent_service_pb2_grpc.AgentServiceStub]:
    """A watcher over ZooKeeper, its view served by AgentServiceServicer on a free port, and a client stub."""
    config = DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=zk_server.hosts, session_timeout_s=6.0)
    discovery = create_discovery(config)
    await discovery.start()
    assert await discovery.wait_connected(15)
    watcher = ReplicaWatcher(discovery=discovery, bzid=bzid, base_name=base_name, agent_version=agent_version)
    await watcher.start()
    assert await watcher.wait_synced(15)
    await watcher.resync()
    view = WatcherReplicaView(watcher, agent_version=agent_version, base_name=base_name)
    sampler = ResourceSampler(address="10.0.0.1:9000", shard_id=1, replica_id=4)
    server = build_server(
        GrpcServerOptions(port=0, host="127.0.0.1"), [add_agent_service(AgentServiceServicer(view, sampler.sample))]
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield agent_service_pb2_grpc.AgentServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0.5)
        await watcher.stop()
        await discovery.stop()


def test_v1_get_replicas_heartbeat_and_resource(zk_server: ZooKeeperServer) -> None:
    bzid = f"bz{uuid.uuid4().hex[:10]}"

    async def scenario() -> None:
        writer = create_discovery(
            DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=zk_server.hosts, session_timeout_s=6.0)
        )
        await writer.start()
        assert await writer.wait_connected(15)  # so that each register_ephemeral below writes its node now
        nodes = {
            ReplicaPath(bzid, "m", ServerType.PS, 0, 1): _meta(ServerType.PS, 0, 1, "10.0.0.2:1"),
            ReplicaPath(bzid, "m", ServerType.PS, 0, 2): _meta(ServerType.PS, 0, 2, "10.0.0.3:1"),
            ReplicaPath(bzid, "m", ServerType.PS, 1, 1): _meta(ServerType.PS, 1, 1, "10.0.0.4:1"),
            ReplicaPath(bzid, "m", ServerType.PS, 1, 2): _meta(ServerType.PS, 1, 2, "10.0.0.5:1", stat=20),
            ReplicaPath(bzid, "m", ServerType.ENTRY, 0, 7): _meta(ServerType.ENTRY, 0, 7, "10.0.0.6:1"),
            ReplicaPath(bzid, "other", ServerType.PS, 0, 1): _meta(ServerType.PS, 0, 1, "10.0.0.9:1"),
        }
        for path, data in nodes.items():
            await writer.register_ephemeral(path.path, data)
        try:
            async with agent_service(zk_server, bzid, 1, "m") as stub:
                reply = await stub.GetReplicas(
                    agent_service_pb2.GetReplicasRequest(server_type=agent_service_pb2.PS, task=0)
                )
                assert list(reply.address_list.address) == ["10.0.0.2:1", "10.0.0.3:1"]
                reply = await stub.GetReplicas(
                    agent_service_pb2.GetReplicasRequest(server_type=agent_service_pb2.PS, task=1, model_name="m")
                )
                assert list(reply.address_list.address) == ["10.0.0.4:1"], "stat 20 (LOADING) is not routable"

                beat = await stub.HeartBeat(agent_service_pb2.HeartBeatRequest(server_type=agent_service_pb2.PS))
                assert {k: list(v.address) for k, v in beat.addresses.items()} == {
                    "ps:0": ["10.0.0.2:1", "10.0.0.3:1"],
                    "ps:1": ["10.0.0.4:1"],
                }
                beat = await stub.HeartBeat(agent_service_pb2.HeartBeatRequest(server_type=agent_service_pb2.ENTRY))
                assert {k: list(v.address) for k, v in beat.addresses.items()} == {"entry:0": ["10.0.0.6:1"]}

                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.GetReplicas(
                        agent_service_pb2.GetReplicasRequest(server_type=agent_service_pb2.PS, task=-1)
                    )
                assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT

                before = read_mem_available_bytes()
                resource = await stub.GetResource(agent_service_pb2.GetResourceRequest())
                after = read_mem_available_bytes()
                assert (resource.address, resource.shard_id, resource.replica_id) == ("10.0.0.1:9000", 1, 4)
                # MemAvailable moves a little between reads; the answer must be this host's figure in bytes.
                assert 0.8 * min(before, after) <= resource.memory <= 1.2 * max(before, after)
                assert resource.cpu >= 0 and resource.work_load >= 0
        finally:
            await writer.stop()

    asyncio.run(scenario())


def test_v1_answers_as_monolith_clients_expect(zk_server: ZooKeeperServer) -> None:
    """Monolith's v1 agent (agent_service.AgentServiceImpl over replica_manager.ReplicaWatcher): HeartBeat keeps
    a task whose replicas are all unroutable, with an empty list; GetReplicas ignores model_name; an address
    registered as 0.0.0.0 is answered with address_ipv6; a replica node named -1 counts."""
    bzid = f"bz{uuid.uuid4().hex[:10]}"

    def meta(address: str, stat: int = 30, address_ipv6: str | None = None) -> bytes:
        return ReplicaMeta(address=address, address_ipv6=address_ipv6, stat=stat).to_json()

    async def scenario() -> None:
        writer = create_discovery(
            DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=zk_server.hosts, session_timeout_s=6.0)
        )
        await writer.start()
        assert await writer.wait_connected(15)
        root = f"/{bzid}/service/m"
        await writer.register_ephemeral(f"{root}/ps:0/1", meta("10.0.0.2:1"))
        await writer.register_ephemeral(f"{root}/ps:0/-1", meta("0.0.0.0:1", address_ipv6="[fd00::3]:1"))
        await writer.register_ephemeral(f"{root}/ps:1/1", meta("10.0.0.4:1", stat=20))
        await writer.register_ephemeral(f"/{bzid}/service/other/ps:0/1", meta("10.0.0.9:1"))
        try:
            async with agent_service(zk_server, bzid, 1, "m") as stub:
                beat = await stub.HeartBeat(agent_service_pb2.HeartBeatRequest(server_type=agent_service_pb2.PS))
                assert {k: list(v.address) for k, v in beat.addresses.items()} == {
                    "ps:0": ["10.0.0.2:1", "[fd00::3]:1"],
                    "ps:1": [],
                }
                for model_name in ("", "m", "other", "no_such_model"):
                    reply = await stub.GetReplicas(
                        agent_service_pb2.GetReplicasRequest(
                            server_type=agent_service_pb2.PS, task=0, model_name=model_name
                        )
                    )
                    assert list(reply.address_list.address) == ["10.0.0.2:1", "[fd00::3]:1"], model_name
        finally:
            await writer.stop()

    asyncio.run(scenario())


def test_v3_heartbeat_keys_are_model_sub_graph(zk_server: ZooKeeperServer) -> None:
    bzid = f"bz{uuid.uuid4().hex[:10]}"

    async def scenario() -> None:
        writer = create_discovery(
            DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=zk_server.hosts, session_timeout_s=6.0)
        )
        await writer.start()
        assert await writer.wait_connected(15)  # so that each register_ephemeral below writes its node now
        for sub_graph, ctx_id, address in (
            ("ps_0", "1", "10.1.0.1:1"),
            ("ps_1", "2", "10.1.0.2:1"),
            ("entry", "3", "10.1.0.3:1"),
        ):
            await writer.register_ephemeral(binding_path(bzid, "m3", sub_graph, "c", ctx_id), b"")
            await writer.register_ephemeral(
                container_service_path(bzid, "c", ctx_id), ContainerServiceInfo(grpc=address, idc="lf").to_json()
            )
        try:
            async with agent_service(zk_server, bzid, 3, None) as stub:
                beat = await stub.HeartBeat(agent_service_pb2.HeartBeatRequest(server_type=agent_service_pb2.PS))
                assert {k: list(v.address) for k, v in beat.addresses.items()} == {
                    "m3:ps_0": ["10.1.0.1:1"],
                    "m3:ps_1": ["10.1.0.2:1"],
                }
                reply = await stub.GetReplicas(
                    agent_service_pb2.GetReplicasRequest(server_type=agent_service_pb2.PS, task=1, model_name="m3")
                )
                assert list(reply.address_list.address) == ["10.1.0.2:1"]
                reply = await stub.GetReplicas(
                    agent_service_pb2.GetReplicasRequest(server_type=agent_service_pb2.ENTRY, task=0, model_name="m3")
                )
                assert list(reply.address_list.address) == ["10.1.0.3:1"]
        finally:
            await writer.stop()

    asyncio.run(scenario())
