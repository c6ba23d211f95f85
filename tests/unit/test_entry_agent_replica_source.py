"""The entry's PS list from its agent's HeartBeat (v1 ``ps:i`` keys, v3 ``model:ps_i`` keys)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from monolith_serving.entry.replica_source import AgentReplicaSource, v3_model_of
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc


class FixedHeartBeat(agent_service_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    def __init__(self, addresses: dict[str, list[str]]) -> None:
        self.addresses = addresses
        self.server_types: list[int] = []

    async def HeartBeat(self, request: object, context: object) -> agent_service_pb2.HeartBeatResponse:
        self.server_types.append(request.server_type)  # type: ignore[attr-defined]
        response = agent_service_pb2.HeartBeatResponse()
        for key, addresses in self.addresses.items():
            response.addresses[key].address.extend(addresses)
        return response


async def _replicas(addresses: dict[str, list[str]], *, num_ps: int, model: str | None) -> list[tuple[str, ...]]:
    servicer = FixedHeartBeat(addresses)
    server = grpc.aio.server()
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    source = AgentReplicaSource(agent_address=f"127.0.0.1:{port}", num_ps=num_ps, model=model)
    try:
        await source.start()
        assert servicer.server_types == [agent_service_pb2.PS]
        return [source.replicas(i) for i in range(num_ps)]
    finally:
        await source.stop()
        await server.stop(0)


def test_v1_keys() -> None:
    shards = asyncio.run(_replicas({"ps:0": ["a:1", "b:1"], "ps:1": ["c:1"], "ps:7": ["x:1"]}, num_ps=2, model=None))
    assert shards == [("a:1", "b:1"), ("c:1",)]


def test_v3_keys_of_other_models_are_ignored() -> None:
    addresses = {"demo:ps_0": ["a:1"], "demo:ps_1": ["b:1"], "other:ps_0": ["z:9"], "demo:entry": ["e:1"]}
    shards = asyncio.run(_replicas(addresses, num_ps=2, model="demo"))
    assert shards == [("a:1",), ("b:1",)]


@pytest.mark.parametrize(("name", "model"), [("demo:entry", "demo"), ("entry", None), ("a:b:entry", "a:b")])
def test_v3_model_of(name: str, model: str | None) -> None:
    assert v3_model_of(name) == model
