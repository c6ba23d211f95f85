"""Under an agent the entry asks for dense servers (HeartBeat(DENSE)) only once a loaded version runs its network
remotely (dense_alone); a plain model never sends one, a dense_alone one does right after its version loads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from test_entry_agent_replica_source import FixedHeartBeat

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.entry.main import EntryServer, EntryServerConfig
from monolith_serving.entry.model import EntryModelConfig
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc


async def _heartbeat_types(export: Path) -> list[int]:
    agent = FixedHeartBeat({})
    server = grpc.aio.server()
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    entry = EntryServer(
        EntryServerConfig(
            model=EntryModelConfig(name="entry", base_path=export / "entry"),
            num_ps=2,
            agent_address=f"127.0.0.1:{port}",
            poll_interval_s=0.05,
            ps_status_timeout_s=0.2,
        )
    )
    try:
        await entry.open()
        await asyncio.sleep(0.5)  # ten control-loop steps
        return list(agent.server_types)
    finally:
        await entry.close()
        await server.stop(0)


@pytest.mark.parametrize("dense_alone", [False, True], ids=["plain", "dense_alone"])
def test_dense_heartbeats_only_for_a_dense_alone_model(tmp_path: Path, dense_alone: bool) -> None:
    write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=50, dense_alone=dense_alone))
    types = asyncio.run(_heartbeat_types(tmp_path))
    assert agent_service_pb2.PS in types, types  # the agent was asked (for PS replicas) all along
    # Only a loaded dense_alone version makes the entry look for dense servers.
    assert (agent_service_pb2.DENSE in types) is dense_alone, types
