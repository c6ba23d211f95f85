"""ProxyServer: the proxy's lifecycle (start in dependency order, ordered drain on stop).

stop(): health NOT_SERVING → stop accepting on gRPC and REST → wait up to drain_timeout_s for requests in
flight → stop probes → close upstream channels → stop discovery → stop /metrics. Idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from monolith_serving.core.grpc_server import GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.core.rest_gateway import RestGateway
from monolith_serving.core.serving_call import MODEL_SERVICE, PREDICTION_SERVICE

# Imported for their descriptors: server reflection lists the two TF Serving services.
from monolith_serving.proto_gen.tensorflow_serving.apis import model_service_pb2, prediction_service_pb2  # noqa: F401
from monolith_serving.proxy.config import DiscoverySourceConfig, ProxyConfig, StaticSourceConfig
from monolith_serving.proxy.core import ProxyCore
from monolith_serving.proxy.endpoints import EndpointSource, StaticEndpointSource
from monolith_serving.proxy.grpc_servicer import ProxyServicer
from monolith_serving.proxy.metrics import ProxyMetrics
from monolith_serving.proxy.router import Router
from monolith_serving.proxy.upstream import UpstreamPool

log = logging.getLogger(__name__)


def build_source(config: StaticSourceConfig | DiscoverySourceConfig, metrics: ProxyMetrics) -> EndpointSource:
    if isinstance(config, StaticSourceConfig):
        return StaticEndpointSource(config.targets, models=config.models)
    # Imported here so a static proxy never loads kazoo/consul.
    from monolith_serving.discovery.factory import create_discovery
    from monolith_serving.discovery.metrics import DiscoveryMetrics
    from monolith_serving.discovery.replica_watcher import ReplicaWatcher
    from monolith_serving.proxy.discovery_source import DiscoveryEndpointSource

    discovery = create_discovery(config.discovery)
    watcher = ReplicaWatcher(
        discovery=discovery,
        bzid=config.bzid,
        base_name=config.base_name,
        agent_version=config.agent_version,
        metrics=DiscoveryMetrics(metrics.registry),
    )
    return DiscoveryEndpointSource(
        discovery=discovery,
        watcher=watcher,
        agent_version=config.agent_version,
        idc=config.idc,
        cluster=config.cluster,
        sync_timeout_s=config.sync_timeout_s,
    )


class ProxyServer:
    """``async with ProxyServer(config):`` serves; ports are known after ``start()``."""

    def __init__(self, config: ProxyConfig, *, source: EndpointSource | None = None) -> None:
        self._config = config
        self.metrics = ProxyMetrics()
        self._source = source or build_source(config.source, self.metrics)
        self._pool = UpstreamPool(tls=config.entry_tls)
        self.core = ProxyCore(
            source=self._source,
            router=Router(config.outlier),
            pool=self._pool,
            metrics=self.metrics,
            config=config.core,
            probe_timeout_s=config.outlier.probe_timeout_s,
        )
        self._grpc: GrpcServer | None = None
        self._rest: RestGateway | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._started = False
        self._stopped = False

    @property
    def grpc_port(self) -> int:
        assert self._grpc is not None, "start() first"
        return self._grpc.port

    @property
    def rest_port(self) -> int | None:
        return self._rest.port if self._rest is not None else None

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_endpoint.port if self._metrics_endpoint is not None else None

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._source.start()
        await self.core.start()
        servicer = ProxyServicer(self.core)
        self._grpc = build_server(
            GrpcServerOptions(
                port=self._config.grpc_port,
                host=self._config.host,
                reflection_services=(PREDICTION_SERVICE, MODEL_SERVICE),
                channel_arguments=self._config.grpc_channel_arguments,
                tls=self._config.tls,
                socket_path=self._config.grpc_socket_path,
            ),
            [servicer.add_to_server],
            registry=self.metrics.registry,
        )
        await self._grpc.start()
        if self._config.rest is not None:
            self._rest = RestGateway(self.core, self._config.rest, metrics_registry=self.metrics.registry)
            await self._rest.start()
        if self._config.metrics_port:
            self._metrics_endpoint = serve_metrics(self._config.metrics_port, self.metrics.registry, self._config.host)
        await self._grpc.set_serving(True)
        for service in (PREDICTION_SERVICE, MODEL_SERVICE):
            await self._grpc.set_serving(True, service)
        log.info(
            "proxy serving gRPC on %s:%d%s%s; entries dialed in %s",
            self._config.host,
            self._grpc.port,
            f" and unix:{self._config.grpc_socket_path}" if self._config.grpc_socket_path is not None else "",
            f", REST on {self._rest.port}" if self._rest else "",
            "plaintext" if self._config.entry_tls is None else "TLS",
        )

    async def stop(self) -> None:
        if self._stopped or not self._started:
            return
        self._stopped = True
        grace_s = self._config.drain_timeout_s
        in_flight = self.core.admission.in_flight
        log.info("proxy draining: %d requests in flight, up to %.1f s", in_flight, grace_s)
        # What is still in flight when the grace ends is cancelled by the transports: the core counts that as the
        # drain's doing (UNAVAILABLE, as gRPC answers), not as clients giving up.
        self.core.drain_started(grace_s)
        stopping = []
        if self._grpc is not None:
            stopping.append(self._grpc.stop(grace_s))  # NOT_SERVING, stop accepting, wait for handlers
        if self._rest is not None:
            stopping.append(self._rest.stop())
        await asyncio.gather(*stopping)
        if not await self.core.admission.drain(0.1):
            log.warning("proxy stopped with %d requests still in flight", self.core.admission.in_flight)
        await self.core.stop()
        await self._pool.close()
        await self._source.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        log.info("proxy stopped")

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
