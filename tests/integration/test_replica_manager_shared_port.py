"""One v1 PS process serves several PS tasks on one port (ps_0 and ps_2 here), so the replica-manager probes
several targets over one channel at the same time. ps_0 is AVAILABLE but slow to answer, ps_2 still LOADING:
ps_2's failed probe must not cut off ps_0's call in flight (that used to end the probe loop for good and crash
``monolith-serving replicas``). A real grpc.aio replica on loopback; the registry is the in-memory one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from replica_manager_fake_replica import FakeModelService, serve

from monolith_serving.core.zk_paths import ReplicaPath, ServerType
from monolith_serving.discovery import Backend, DiscoveryConfig, ReplicaMeta
from monolith_serving.discovery.static import StaticDiscovery
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2
from monolith_serving.replica_manager.config import ReplicaManagerConfig
from monolith_serving.replica_manager.flags import RegistrySettings
from monolith_serving.replica_manager.listing import list_replicas
from monolith_serving.replica_manager.prober import GrpcReplicaProber, ProbeTarget
from monolith_serving.replica_manager.server import ReplicaManagerServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BZID = "bz"
MODEL = "m"
VERSION = 5
# ps_0 answers this late, so ps_2's failed probe ends while ps_0's GetModelStatus is still in flight. Well
# within PROBE_TIMEOUT_S: the test needs the overlap, not a timeout.
SLOW_ANSWER_S = 0.3
PROBE_TIMEOUT_S = 1.0
ROUNDS = 4


@asynccontextmanager
async def shared_port_replica() -> AsyncIterator[str]:
    """One process, two PS tasks: ps_0 AVAILABLE (slow), ps_2 LOADING. Yields its address."""
    service = FakeModelService({"ps_0"}, VERSION, loading=frozenset({"ps_2"}), delay_s={"ps_0": SLOW_ANSWER_S})
    server, port = await serve(0, service)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def registry_nodes(address: str) -> dict[str, bytes]:
    """Both tasks registered AVAILABLE (stat 30) at the same address, as a v1 PS process registers them."""
    nodes = {}
    for task in (0, 2):
        path = ReplicaPath(bzid=BZID, base_name=MODEL, server_type=ServerType.PS, task=task, replica_id=1)
        meta = ReplicaMeta(address=address, stat=30, model_name=f"ps_{task}", server_type="ps", task=task, replica=1)
        nodes[path.path] = meta.to_json()
    return nodes


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def health_status(address: str) -> int | None:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return None
        return int(reply.status)


def manager_config() -> ReplicaManagerConfig:
    return ReplicaManagerConfig(
        discovery=DiscoveryConfig(backend=Backend.STATIC),
        bzid=BZID,
        port=0,
        host="127.0.0.1",
        probe_interval_s=PROBE_TIMEOUT_S,
        probe_timeout_s=PROBE_TIMEOUT_S,
    )


def test_concurrent_probes_of_two_tasks_on_one_channel_both_get_their_answer() -> None:
    async def scenario() -> None:
        async with shared_port_replica() as address, GrpcReplicaProber(timeout_s=PROBE_TIMEOUT_S) as prober:
            ps_0, ps_2 = ProbeTarget(address, "ps_0"), ProbeTarget(address, "ps_2")
            for _ in range(ROUNDS):
                healthy, loading = await asyncio.gather(prober.probe(ps_0), prober.probe(ps_2))
                assert (healthy.healthy, healthy.version, healthy.error) == (True, VERSION, None)
                assert (loading.healthy, loading.version) == (False, VERSION)
                assert loading.error == "ps_2 has no AVAILABLE version"

    asyncio.run(scenario())


def test_probe_loop_keeps_running_evicts_the_loading_task_and_keeps_the_slow_one() -> None:
    async def scenario() -> None:
        async with shared_port_replica() as address:
            discovery = StaticDiscovery(nodes=registry_nodes(address))
            async with ReplicaManagerServer(manager_config(), discovery=discovery) as manager:
                assert await manager.wait_ready(10)
                ps_0, ps_2 = ProbeTarget(address, "ps_0"), ProbeTarget(address, "ps_2")

                def probed_rounds(target: ProbeTarget) -> int:
                    record = manager.probes.record(target)
                    return record.probes if record is not None else 0

                await wait_for(lambda: min(probed_rounds(ps_0), probed_rounds(ps_2)) >= ROUNDS, 30, "probe rounds")
                assert manager.probes.is_evicted(ps_2)
                assert not manager.probes.is_evicted(ps_0)
                assert manager.view.get_replicas(ServerType.PS, 0, MODEL) == [address]
                assert manager.view.get_replicas(ServerType.PS, 2, MODEL) == []
                assert (
                    manager.metrics.registry.get_sample_value("monolith_replica_manager_probe_cycle_errors_total") == 0
                )
                assert await health_status(f"127.0.0.1:{manager.port}") == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())


def test_replicas_listing_probes_both_tasks_of_one_process() -> None:
    async def scenario() -> None:
        async with shared_port_replica() as address:
            nodes = {path: data.decode() for path, data in registry_nodes(address).items()}
            settings = RegistrySettings(
                bzid=BZID, discovery=DiscoveryConfig(backend=Backend.STATIC, static_nodes=nodes), conf=None
            )
            listed = await list_replicas(settings, timeout_s=5, probe_timeout_s=PROBE_TIMEOUT_S)
            reachable = {item.row.key: (item.probe.healthy, item.probe.version) for item in listed if item.probe}
            assert reachable == {"ps:0": (True, VERSION), "ps:2": (False, VERSION)}

    asyncio.run(scenario())


class RendezvousHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Answers SERVING only once GetModelStatus has arrived too (or, bounded, much later than the probe
    timeout): a probe that sends the two calls one after the other gets no health answer in time."""

    def __init__(self, status_arrived: asyncio.Event) -> None:
        self.status_arrived = status_arrived

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        with suppress(TimeoutError):
            await asyncio.wait_for(self.status_arrived.wait(), timeout=5 * PROBE_TIMEOUT_S)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class SignallingModelService(FakeModelService):
    def __init__(self, status_arrived: asyncio.Event) -> None:
        super().__init__({"ps_0"}, VERSION)
        self.status_arrived = status_arrived

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        self.status_arrived.set()
        return await super().GetModelStatus(request, context)


def test_health_check_and_model_status_are_in_flight_together() -> None:
    async def scenario() -> None:
        status_arrived = asyncio.Event()
        server, port = await serve(0, SignallingModelService(status_arrived), RendezvousHealth(status_arrived))
        try:
            async with GrpcReplicaProber(timeout_s=PROBE_TIMEOUT_S) as prober:
                result = await prober.probe(ProbeTarget(f"127.0.0.1:{port}", "ps_0"))
            assert (result.healthy, result.version, result.error) == (True, VERSION, None)
        finally:
            await server.stop(0)

    asyncio.run(scenario())


def test_a_probe_loop_that_ends_makes_the_manager_not_serving(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with ReplicaManagerServer(manager_config(), discovery=StaticDiscovery(nodes={})) as manager:
            assert await manager.wait_ready(10)
            address = f"127.0.0.1:{manager.port}"
            await wait_for(lambda: probe_loop_task() is not None, 10, "the probe loop to start")
            loop_task = probe_loop_task()
            assert loop_task is not None
            loop_task.cancel()  # not stop(): as if a bug ended the loop
            deadline = asyncio.get_running_loop().time() + 10
            while await health_status(address) != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert asyncio.get_running_loop().time() < deadline, "still SERVING without a probe loop"
                await asyncio.sleep(0.05)

    def probe_loop_task() -> asyncio.Task[object] | None:
        return next((t for t in asyncio.all_tasks() if t.get_name() == "replica-manager-probe"), None)

    with caplog.at_level(logging.ERROR, logger="monolith_serving.replica_manager.server"):
        asyncio.run(scenario())
    assert any(r.levelno == logging.CRITICAL and "probe loop ended" in r.getMessage() for r in caplog.records)


def test_a_round_cut_off_by_cancelled_error_is_one_failed_round(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with shared_port_replica() as address:
            discovery = StaticDiscovery(nodes=registry_nodes(address))
            async with ReplicaManagerServer(manager_config(), discovery=discovery) as manager:
                real_probe_once = manager.probe_once
                rounds = 0

                async def first_round_cut_off() -> None:
                    nonlocal rounds
                    rounds += 1
                    if rounds == 1:
                        raise asyncio.CancelledError  # as gRPC raises it for a call whose channel was closed
                    await real_probe_once()

                monkeypatch.setattr(manager, "probe_once", first_round_cut_off)
                assert await manager.wait_ready(10)
                ps_2 = ProbeTarget(address, "ps_2")
                await wait_for(lambda: manager.probes.is_evicted(ps_2), 30, "probing to go on and evict ps_2")
                errors = manager.metrics.registry.get_sample_value("monolith_replica_manager_probe_cycle_errors_total")
                assert errors == 1

    asyncio.run(scenario())
