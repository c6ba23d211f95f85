"""``ReplicaManagerServer``: the replica-manager's lifecycle (registry, watchers, probe loop, gRPC, metrics).

Health (gRPC, service ""): NOT_SERVING until the registry has connected once and the view is filled; then
SERVING, also while the registry is lost (the last known view keeps being served), until the probe loop
ends, which only a bug can do: then NOT_SERVING for good, so that the process gets restarted rather than
serve a view that no longer evicts anyone. Service
``REGISTRY_HEALTH_SERVICE`` tells the registry connection apart: SERVING only while connected (mirrored by
the gauge ``monolith_replica_manager_registry_connected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from monolith_serving.core.aio_wait import event_set_within
from monolith_serving.core.cancellation import cancelled_by_caller
from monolith_serving.core.grpc_server import GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.discovery.agent_servicer import AgentServiceServicer, add_agent_service
from monolith_serving.discovery.agent_view import ResourceSample, ResourceSampler
from monolith_serving.discovery.base import Discovery, SessionState
from monolith_serving.discovery.factory import create_discovery
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2
from monolith_serving.replica_manager.cluster_view import ClusterView
from monolith_serving.replica_manager.config import ReplicaManagerConfig
from monolith_serving.replica_manager.metrics import ReplicaManagerMetrics
from monolith_serving.replica_manager.probe_state import ReplicaProbeStateManager
from monolith_serving.replica_manager.prober import GrpcReplicaProber, ProbeTarget

log = logging.getLogger(__name__)

__all__ = ["REGISTRY_HEALTH_SERVICE", "ReplicaManagerServer"]

REGISTRY_HEALTH_SERVICE = "monolith.replica_manager.registry"
_MAX_CONNECT_LOG_INTERVAL_S = 60.0


class ReplicaManagerServer:
    """``start()`` binds the port and returns at once (the registry may still be down); ``stop()`` is
    ordered: stop answering → stop loops → stop watchers → close probes and registry. Both idempotent."""

    def __init__(self, config: ReplicaManagerConfig, *, discovery: Discovery | None = None) -> None:
        self._config = config
        self.metrics = ReplicaManagerMetrics()
        discovery_metrics = DiscoveryMetrics(self.metrics.registry)
        self._discovery = discovery if discovery is not None else create_discovery(config.discovery)
        watcher_args: dict[str, Any] = {
            "discovery": self._discovery,
            "bzid": config.bzid,
            "resync_interval_s": config.resync_interval_s,
            "metrics": discovery_metrics,
        }
        self._v1 = ReplicaWatcher(agent_version=1, **watcher_args)
        self._v3 = ReplicaWatcher(agent_version=3, **watcher_args)
        self._prober = GrpcReplicaProber(timeout_s=config.probe_timeout_s)
        self.probes = ReplicaProbeStateManager(
            probe=self._prober.probe, failures_to_evict=config.failures_to_evict, on_transition=self._on_transition
        )
        self.view = ClusterView(v1=self._v1, v3=self._v3, probes=self.probes)
        self._grpc: GrpcServer | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._started = False
        self._stopped = False

    @property
    def port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("not started")
        return self._grpc.port

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_endpoint.port if self._metrics_endpoint is not None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self, timeout_s: float) -> bool:
        return await event_set_within(self._ready, timeout_s)

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        config = self._config
        self.metrics.registry_connected.set(0)
        servicer = AgentServiceServicer(self.view, self._resource)
        self._grpc = build_server(
            GrpcServerOptions(
                port=config.port,
                host=config.host,
                reflection_services=(agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,),
                channel_arguments=config.grpc_channel_arguments,
            ),
            [add_agent_service(servicer)],
            registry=self.metrics.registry,
        )
        await self._grpc.set_serving(False)
        await self._grpc.set_serving(False, REGISTRY_HEALTH_SERVICE)
        await self._grpc.start()
        log.info("replica-manager for bzid %s on gRPC port %d", config.bzid, self._grpc.port)
        if config.metrics_port:
            self._metrics_endpoint = serve_metrics(config.metrics_port, self.metrics.registry, host=config.host)
        self._discovery.add_state_listener(self._on_session_state)
        await self._discovery.start()
        await self._v1.start()
        await self._v3.start()
        self._spawn(self._become_ready(), "replica-manager-connect")

    def _resource(self) -> ResourceSample:
        # The manager is no shard or replica of any model: -1 says so. The port is known only once bound.
        return ResourceSampler(address=f"{self._config.host}:{self.port}", shard_id=-1, replica_id=-1).sample()

    async def stop(self) -> None:
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        if self._grpc is not None:
            await self._grpc.stop(self._config.grace_s)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._v1.stop()
        await self._v3.stop()
        self._discovery.remove_state_listener(self._on_session_state)
        await self._prober.close()
        await self._discovery.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()

    async def __aenter__(self) -> ReplicaManagerServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # Never lose a background failure silently (e.g. the first connect/sync step): only stop() cancels.
        if task.cancelled():
            if not self._stopped:
                log.error("background task %s was cancelled while the server runs", task.get_name())
        elif task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())
        if task is self._probe_task and not self._stopped:
            self._on_probe_loop_ended()

    def _on_probe_loop_ended(self) -> None:
        # Without probing, dead replicas stay in the answers and evicted ones never return. Restarting the
        # loop here could spin on the same bug; NOT_SERVING lets the orchestrator restart the process.
        log.critical("the probe loop ended: evictions are frozen; reporting NOT_SERVING")
        if self._grpc is not None:
            self._spawn(self._grpc.set_serving(False), "replica-manager-health")

    # ---- registry --------------------------------------------------------------------------------------
    async def _become_ready(self) -> None:
        """Wait for the registry (the client retries the connection itself, with backoff), fill the view,
        then report SERVING and start probing."""
        log_interval_s = self._config.connect_log_interval_s
        waited_s = 0.0
        while not await self._discovery.wait_connected(log_interval_s):
            waited_s += log_interval_s
            log.warning("registry not reachable for %.0f s; still retrying (health NOT_SERVING)", waited_s)
            log_interval_s = min(log_interval_s * 2, _MAX_CONNECT_LOG_INTERVAL_S)
        await self._v1.resync()
        await self._v3.resync()
        self.metrics.publish_availability(self.view.availability())
        assert self._grpc is not None
        await self._grpc.set_serving(True)
        self._ready.set()
        log.info("registry connected; serving %d replicas of %d models", len(self.view.rows()), len(self.view.models()))
        self._probe_task = self._spawn(self._probe_loop(), "replica-manager-probe")

    def _on_session_state(self, state: SessionState) -> None:
        connected = state is SessionState.CONNECTED
        self.metrics.registry_connected.set(1 if connected else 0)
        if not connected:
            log.warning("registry %s: serving the last known view", state.value)
        if self._grpc is not None and not self._stopped:
            self._spawn(self._grpc.set_serving(connected, REGISTRY_HEALTH_SERVICE), "replica-manager-health")

    # ---- probing ---------------------------------------------------------------------------------------
    async def probe_once(self) -> None:
        """One round: probe every routable replica, apply evictions, publish the availability gauges."""
        targets = self.view.probe_targets()
        await self._prober.retain({t.address for t in targets})
        await self.probes.update(targets)
        self.metrics.publish_availability(self.view.availability())

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval_s = self._config.probe_interval_s
        next_at = loop.time()
        while True:
            started = time.monotonic()
            try:
                await self.probe_once()
            except asyncio.CancelledError:
                if cancelled_by_caller():
                    raise  # stop()
                # A gRPC call cut off under the round raises CancelledError too: one failed round.
                self._count_failed_round()
            except Exception:
                # One bad round must never end the loop.
                self._count_failed_round()
            finally:
                self.metrics.probe_cycle_seconds.observe(time.monotonic() - started)
            # Fixed rate (not fixed delay): slow rounds must not stretch the eviction bound.
            next_at = max(next_at + interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    def _count_failed_round(self) -> None:
        """Call from an ``except`` block: logs the exception being handled."""
        self.metrics.probe_cycle_errors.inc()
        log.exception("probe round failed")

    def _on_transition(self, target: ProbeTarget, evicted: bool) -> None:
        models = {row.model for row in self.view.rows() if row.target == target} or {""}
        for model in models:
            (self.metrics.evictions if evicted else self.metrics.readmissions).labels(model=model).inc()
