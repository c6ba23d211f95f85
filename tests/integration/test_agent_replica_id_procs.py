"""v1 agents without a replica id (neither REPLICA_ID nor MY_POD_NAME), as real processes on real ZooKeeper, register
as Monolith's agents do (replica_manager.ReplicaUpdater.register): an entry takes a sequential node and adopts its
number (its pod's PS nodes follow it), a PS without an entry registers ``-1``; GetResource reports the adopted id."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import pytest
from agent_procs import AgentProcess, replica_stats, v1_agent_conf, wait_for
from kazoo.client import KazooClient
from procs import free_port
from zk_harness import ZooKeeperServer

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.discovery.replica_meta import ReplicaMeta
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc

pytestmark = pytest.mark.integration

AVAILABLE = 30
# Whatever the test runner's environment holds: an empty variable counts as unset.
NO_IDS = {"REPLICA_ID": "", "MY_POD_NAME": ""}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("replica-id-export")
    write_demo(DemoOptions(out=folder, num_ps=2, rows=50))
    return folder


def resource_replica_id(agent_port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{agent_port}") as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        answer = stub.GetResource(agent_service_pb2.GetResourceRequest(), timeout=10)
    return int(answer.replica_id)


def test_mixed_agent_adopts_its_entrys_sequence_number_for_every_node(
    zk_server: ZooKeeperServer, zk: KazooClient, export: Path, tmp_path: Path
) -> None:
    bzid = f"rid{uuid.uuid4().hex[:8]}"
    root = f"/{bzid}/service/demo"
    # Three live entries of Monolith agents without ids took sequence numbers 0..2 of the task directory before.
    other = ReplicaMeta(address="10.9.9.9:1").to_json()
    taken = [zk.create(f"{root}/entry:0/0", other, ephemeral=True, sequence=True, makepath=True) for _ in range(3)]
    assert [path.rsplit("/", 1)[1] for path in taken] == ["00000000000", "00000000001", "00000000002"]
    ports = {"PORT2": free_port(), "PORT3": free_port(), "PORT5": free_port()}
    env = {**NO_IDS, **{k: str(v) for k, v in ports.items()}}
    agent = AgentProcess(
        tmp_path, "mixed", v1_agent_conf(zk_server, bzid, export, "stand_alone_serving true\n"), env
    ).start()
    try:
        # The next number is 3: the entry's node, and the PS nodes under the same id (plain decimal).
        want = {
            **{f"entry:0/{n:011d}": 0 for n in range(3)},
            "entry:0/00000000003": AVAILABLE,
            "ps:0/3": AVAILABLE,
            "ps:1/3": AVAILABLE,
        }
        wait_for("entry + 2 PS AVAILABLE as replica 3", lambda: replica_stats(zk, root) == want, 120)
        assert json.loads(zk.get(f"{root}/entry:0/00000000003")[0])["replica"] == 3
        assert json.loads(zk.get(f"{root}/ps:1/3")[0])["replica"] == 3
        assert resource_replica_id(ports["PORT2"]) == 3
        assert "makes this agent replica 3" in agent.log()
    finally:
        agent.stop()


def test_entries_without_id_get_distinct_nodes_and_a_ps_without_id_registers_minus_one(
    zk_server: ZooKeeperServer, zk: KazooClient, export: Path, tmp_path: Path
) -> None:
    bzid = f"rid{uuid.uuid4().hex[:8]}"
    root = f"/{bzid}/service/demo"
    ps_ports = {"PORT2": str(free_port()), "PORT3": str(free_port())}
    ps = AgentProcess(
        tmp_path, "ps", v1_agent_conf(zk_server, bzid, export, "deploy_type ps\n"), {**NO_IDS, **ps_ports}
    )
    entry_ports = [{"PORT2": str(free_port()), "PORT3": str(free_port())} for _ in range(2)]
    entries = [
        AgentProcess(
            tmp_path, f"entry{n}", v1_agent_conf(zk_server, bzid, export, "deploy_type entry\n"), {**NO_IDS, **ports}
        )
        for n, ports in enumerate(entry_ports)
    ]
    try:
        ps.start()
        ps_nodes = {"ps:0/-1": AVAILABLE, "ps:1/-1": AVAILABLE}
        wait_for("ps:0/-1 and ps:1/-1 AVAILABLE", lambda: replica_stats(zk, root) == ps_nodes, 90)
        assert resource_replica_id(int(ps_ports["PORT2"])) == -1
        assert "registers its replicas as replica -1" in ps.log()
        for agent in entries:
            agent.start()
        want = {**ps_nodes, "entry:0/00000000000": AVAILABLE, "entry:0/00000000001": AVAILABLE}
        wait_for("two entry nodes AVAILABLE", lambda: replica_stats(zk, root) == want, 120)
        # Each agent reports the number of its own node (the one whose address is its entry's port).
        for agent, ports in zip(entries, entry_ports, strict=True):
            replica_id = resource_replica_id(int(ports["PORT2"]))
            data = json.loads(zk.get(f"{root}/entry:0/{replica_id:011d}")[0])
            assert data["address"] == f"127.0.0.1:{ports['PORT3']}" and data["replica"] == replica_id, agent.log()
    finally:
        for agent in [*entries, ps]:
            agent.stop()
