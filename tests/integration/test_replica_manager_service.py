"""The replica-manager on a real ZooKeeper with real replica processes: eviction, readmission, metrics,
registry loss, and the ``replicas`` command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procs import ServerProcess, free_port
from prometheus_client.parser import text_string_to_metric_families
from zk_harness import ZooKeeperServer

from monolith_serving.core.zk_paths import ReplicaPath, ServerType
from monolith_serving.discovery import Backend, DiscoveryConfig, ReplicaMeta, create_discovery
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc
from monolith_serving.replica_manager.config import ReplicaManagerConfig
from monolith_serving.replica_manager.server import REGISTRY_HEALTH_SERVICE, ReplicaManagerServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FAKE_REPLICA = Path(__file__).with_name("replica_manager_fake_replica.py")
PROBE_INTERVAL_S = 1.0
# The bound is 3 probe intervals; the slack covers this test's own polling and RPC latency on a busy machine.
MEASUREMENT_SLACK_S = 0.5


@contextmanager
def fake_replica(port: int, version: int) -> Iterator[subprocess.Popen[bytes]]:
    """A replica process answering health + GetModelStatus(ps_0) on ``port``; killed (-9) on exit."""
    process = subprocess.Popen(
        [sys.executable, str(FAKE_REPLICA), "--port", str(port), "--models", "ps_0", "--version", str(version)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: health_status(f"127.0.0.1:{port}") == health_pb2.HealthCheckResponse.SERVING, 30, "replica")
        yield process
    finally:
        process.kill()
        process.wait()


def health_status(address: str, service: str = "") -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0
            )
        except grpc.RpcError:
            return None
        return int(reply.status)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``predicate``; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def ps0_replicas(address: str, model: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        reply = agent_service_pb2_grpc.AgentServiceStub(channel).GetReplicas(
            agent_service_pb2.GetReplicasRequest(server_type=agent_service_pb2.PS, task=0, model_name=model),
            timeout=2.0,
        )
    return list(reply.address_list.address)


def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def available_gauge(metrics_port: int, model: str) -> float | None:
    labels = (("model", model), ("sub_graph", "ps_0"), ("task", "0"))
    return scrape(metrics_port).get(("monolith_replica_manager_available_replicas", labels))


def run_replicas_cli(zk: ZooKeeperServer, bzid: str, *extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "monolith_serving", "replicas", "--zk", zk.hosts, "--bzid", bzid, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_killed_replica_is_evicted_within_three_probe_intervals_and_readmitted(
    zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    bzid = f"bz{uuid.uuid4().hex[:10]}"
    replica_port = free_port()
    replica_address = f"127.0.0.1:{replica_port}"
    path = ReplicaPath(bzid=bzid, base_name="m", server_type=ServerType.PS, task=0, replica_id=1)
    meta = ReplicaMeta(address=replica_address, stat=30, model_name="ps_0", server_type="ps", task=0, replica=1)

    # The node is owned by this test's session, so it stays registered while the replica process is dead.
    loop = asyncio.new_event_loop()
    owner = create_discovery(DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=zk_server.hosts))
    loop.run_until_complete(owner.start())
    assert loop.run_until_complete(owner.wait_connected(15))
    loop.run_until_complete(owner.register_ephemeral(path.path, meta.to_json()))

    rm_port, metrics_port = free_port(), free_port()
    manager = ServerProcess(
        "replica-manager",
        [
            *("--zk_servers", zk_server.hosts, "--bzid", bzid, "--host", "127.0.0.1"),
            *("--port", str(rm_port), "--metrics_port", str(metrics_port)),
            *("--probe_interval_s", str(PROBE_INTERVAL_S)),
        ],
        port=rm_port,
        log_path=tmp_path / "replica-manager.log",
    )
    try:
        with fake_replica(replica_port, version=5) as replica:
            manager.start()  # after the replica is up, so that no probe fails before the kill below
            wait_until(lambda: available_gauge(metrics_port, "m") == 1, 15, "the replica to be probed available")
            assert ps0_replicas(manager.address, "m") == [replica_address]
            assert health_status(manager.address, REGISTRY_HEALTH_SERVICE) == health_pb2.HealthCheckResponse.SERVING

            listed = json.loads(run_replicas_cli(zk_server, bzid, "--json"))
            assert [(r["model"], r["task"], r["replica"], r["address"], r["state"], r["reachable"], r["version"])
                    for r in listed] == [("m", "ps:0", "1", replica_address, "AVAILABLE", True, 5)]  # fmt: skip

            replica.kill()
            replica.wait()
            took_s = wait_until(lambda: ps0_replicas(manager.address, "m") == [], 10, "eviction")
            assert took_s <= 3 * PROBE_INTERVAL_S + MEASUREMENT_SLACK_S, f"evicted after {took_s:.2f} s"
            samples = scrape(metrics_port)
            assert samples[("monolith_replica_manager_evictions_total", (("model", "m"),))] == 1
            assert available_gauge(metrics_port, "m") == 0
            assert loop.run_until_complete(owner.get_data(path.path)) is not None, "the node itself stays"

            table = run_replicas_cli(zk_server, bzid)
            header, row = table.splitlines()
            assert header.split() == ["MODEL", "TASK", "REPLICA", "ADDRESS", "STATE", "REACHABLE", "VERSION"]
            assert row.split() == ["m", "ps:0", "1", replica_address, "AVAILABLE", "no", "-"]

        # Restarted on the same port: the next healthy probe readmits it.
        with fake_replica(replica_port, version=6):
            wait_until(lambda: ps0_replicas(manager.address, "m") == [replica_address], 3 * PROBE_INTERVAL_S + 5,
                       "readmission")  # fmt: skip
            samples = scrape(metrics_port)
            assert samples[("monolith_replica_manager_readmissions_total", (("model", "m"),))] == 1
            assert samples[("monolith_replica_manager_evictions_total", (("model", "m"),))] == 1
            assert available_gauge(metrics_port, "m") == 1
    finally:
        manager.stop()
        loop.run_until_complete(owner.stop())
        loop.close()


def test_not_serving_until_zookeeper_is_up_then_keeps_the_last_view_when_lost(
    zk_private_server: ZooKeeperServer,
) -> None:
    bzid = f"bz{uuid.uuid4().hex[:10]}"
    zk_private_server.stop()
    config = ReplicaManagerConfig(
        discovery=DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=zk_private_server.hosts, session_timeout_s=4.0),
        bzid=bzid,
        port=0,
        host="127.0.0.1",
        probe_interval_s=PROBE_INTERVAL_S,
        connect_log_interval_s=0.5,
    )
    node = ReplicaPath(bzid=bzid, base_name="m", server_type=ServerType.PS, task=0, replica_id=1)
    # Nobody listens here: the probe evicts it, so the view below is checked through the registry state only.
    meta = ReplicaMeta(address="127.0.0.1:1", stat=30, model_name="ps_0", server_type="ps", task=0, replica=1)

    async def health(address: str, service: str = "") -> int | None:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
            except grpc.aio.AioRpcError:
                return None
            return int(reply.status)

    async def scenario() -> None:
        async with ReplicaManagerServer(config) as server:
            address = f"127.0.0.1:{server.port}"
            await asyncio.sleep(1.5)  # a few connection attempts fail meanwhile
            assert not server.ready
            assert await health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert server.metrics.registry.get_sample_value("monolith_replica_manager_registry_connected") == 0

            await asyncio.to_thread(zk_private_server.start)
            writer = create_discovery(
                DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=zk_private_server.hosts, session_timeout_s=4.0)
            )
            await writer.start()
            assert await writer.wait_connected(15)
            await writer.register_ephemeral(node.path, meta.to_json())
            assert await server.wait_ready(30), "replica-manager never became ready after ZooKeeper came up"
            assert await health(address) == health_pb2.HealthCheckResponse.SERVING
            assert await health(address, REGISTRY_HEALTH_SERVICE) == health_pb2.HealthCheckResponse.SERVING
            deadline = time.monotonic() + 10
            while not server.view.rows() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert [row.address for row in server.view.rows()] == ["127.0.0.1:1"]

            await asyncio.to_thread(zk_private_server.stop)
            deadline = time.monotonic() + 15
            while await health(address, REGISTRY_HEALTH_SERVICE) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "registry loss not reported in health"
                await asyncio.sleep(0.1)
            assert await health(address) == health_pb2.HealthCheckResponse.SERVING, "the last view is still served"
            assert server.view.stale
            assert server.metrics.registry.get_sample_value("monolith_replica_manager_registry_connected") == 0
            assert [row.address for row in server.view.rows()] == ["127.0.0.1:1"]
            await writer.stop()

    asyncio.run(scenario())
