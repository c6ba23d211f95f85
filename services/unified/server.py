"""UnifiedServer: one gRPC address serving a PS core and an entry core side by side (a v3 container).

Start: bind gRPC (health NOT_SERVING) -> /metrics -> open the PS core -> apply ``--model_config_file`` if
given -> health SERVING. Models then come from HandleReloadConfigRequest: the config is split by
sub_graph (``routing``), the PS part replaces the PS core's models and the entry part the entry core's
(an empty part unloads that side). Reloads are serialised. Stop (idempotent): health NOT_SERVING ->
drain gRPC -> close the entry core, then the PS core -> stop /metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from prometheus_client import CollectorRegistry

from monolith_serving.core.agent_conf import DEFAULT_FETCH_PS_RETRY, DEFAULT_FETCH_PS_TIMEOUT_MS
from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.core.grpc_server import ChannelArguments, GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.core.model_config_list import check_reload
from monolith_serving.core.run_to_end import run_to_end
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModelConfig
from monolith_serving.entry.ps_coalesce import CoalesceConfig
from monolith_serving.entry.request_coalesce import RequestCoalescing
from monolith_serving.proto_gen.tensorflow_serving.apis import model_service_pb2_grpc
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2
from monolith_serving.ps.config import (
    DEFAULT_MAX_FIDS_PER_REQUEST,
    PsConfig,
    SubModelConfig,
    check_partitions,
    sub_models_from_proto,
)
from monolith_serving.ps.server import PsServer
from monolith_serving.ps.servicer import add_prediction_servicer
from monolith_serving.unified.entry_side import EntrySettings, EntrySide
from monolith_serving.unified.routing import split_model_server_config
from monolith_serving.unified.servicer import UnifiedModelServicer, UnifiedPredictionServicer

__all__ = ["UnifiedConfig", "UnifiedServer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class UnifiedConfig:
    port: int
    agent_address: str  # the entry core finds PS replicas through this agent's HeartBeat
    host: str = "0.0.0.0"
    metrics_port: int = 0
    grpc_channel_arguments: ChannelArguments = ()  # --grpc_channel_arguments
    model_config_file: Path | None = None  # applied once at start; later configs come by reload
    file_system_poll_wait_s: float = 1.0
    fetch_ps_timeout_ms: int = DEFAULT_FETCH_PS_TIMEOUT_MS
    fetch_ps_retry: int = DEFAULT_FETCH_PS_RETRY
    coalesce: CoalesceConfig = field(default_factory=CoalesceConfig)
    coalesce_requests: RequestCoalescing = field(default_factory=RequestCoalescing)
    max_batch_size: int | None = None
    num_load_threads: int = 1
    max_fids_per_request: int = DEFAULT_MAX_FIDS_PER_REQUEST
    grace_s: float = 2.0


class UnifiedServer:
    """``start``/``stop`` are idempotent; ``async with`` works too. ``apply`` is the reload."""

    def __init__(self, config: UnifiedConfig) -> None:
        self.config = config
        # One registry: PS metrics are monolith_ps_*, entry metrics entry_*, so they never collide.
        self.registry = CollectorRegistry()
        self.ps = PsServer(
            PsConfig(
                port=config.port,
                host=config.host,
                file_system_poll_wait_s=config.file_system_poll_wait_s,
                max_fids_per_request=config.max_fids_per_request,
                num_load_threads=config.num_load_threads,
                models_from_reload=True,
            ),
            registry=self.registry,
        )
        self.entry = EntrySide(
            settings=EntrySettings(
                agent_address=config.agent_address,
                fetch_ps_timeout_ms=config.fetch_ps_timeout_ms,
                fetch_ps_retry=config.fetch_ps_retry,
                coalesce=config.coalesce,
                coalesce_requests=config.coalesce_requests,
                max_batch_size=config.max_batch_size,
                poll_interval_s=max(config.file_system_poll_wait_s, 0.2),
                max_fids_per_request=config.max_fids_per_request,
            ),
            metrics=EntryMetrics(self.registry),
        )
        self._reload_lock = asyncio.Lock()
        self._changes: set[asyncio.Task[None]] = set()  # reloads running to their end (``core.run_to_end``)
        self._grpc: GrpcServer | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("UnifiedServer is not started")
        return self._grpc.port

    async def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """A HandleReloadConfigRequest: refused before either core changes when a PS shard is outside --num_ps,
        a model moves to a base path that is not a folder, or a PS version label names a version not AVAILABLE
        (``core.model_config_list``; the start-up config is not held to this: its folders may come later)."""
        ps_models, entry_model = self._parse(config)
        check_partitions(ps_models, self.ps.core.num_ps)
        check_reload(ps_models, self.ps.versions)
        self.entry.check(entry_model)
        await run_to_end(self._apply_both(ps_models, entry_model), "reload", self._changes)

    async def apply(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Both parts are validated before either core changes; then PS first (the entry gates on it)."""
        await run_to_end(self._apply_both(*self._parse(config)), "reload", self._changes)

    def _parse(
        self, config: model_server_config_pb2.ModelServerConfig
    ) -> tuple[tuple[SubModelConfig, ...], EntryModelConfig | None]:
        """Both parts of ``config``: the PS sub-models and the entry model (None: unload it)."""
        split = split_model_server_config(config)
        return sub_models_from_proto(split.ps), self.entry.parse(split.entry)

    async def _apply_both(self, ps_models: Sequence[SubModelConfig], entry_model: EntryModelConfig | None) -> None:
        # Run to its end as one change: a caller cut off between the parts left the PS part applied and the entry
        # part not, and released the lock while the PS part still ran.
        async with self._reload_lock:
            await self.ps.reload(ps_models)
            await self.entry.apply(entry_model)
        log.info("hosting %d PS models and entry %s", len(ps_models), entry_model.name if entry_model else "(none)")

    async def start(self) -> None:
        if self._grpc is not None:
            return
        ps_prediction, ps_model = self.ps.servicers()
        prediction = UnifiedPredictionServicer(ps=ps_prediction, entry=self.entry)
        models = UnifiedModelServicer(ps=ps_model, entry=self.entry, apply_config=self.reload)

        def add_prediction(server: grpc.aio.Server) -> None:
            add_prediction_servicer(prediction, server)

        def add_model(server: grpc.aio.Server) -> None:
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)  # type: ignore[no-untyped-call]

        options = GrpcServerOptions(
            port=self.config.port,
            host=self.config.host,
            reflection_services=("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"),
            channel_arguments=self.config.grpc_channel_arguments,
        )
        self._grpc = build_server(options, [add_prediction, add_model], registry=self.registry)
        await self._grpc.start()
        if self.config.metrics_port:
            self._metrics_endpoint = serve_metrics(self.config.metrics_port, self.registry, host=self.config.host)
        await self.ps.open()
        if self.config.model_config_file is not None:
            await self.apply(read_model_server_config(self.config.model_config_file))
        await self._grpc.set_serving(True)
        log.info("unified server on port %d", self._grpc.port)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._grpc is not None:
            await self._grpc.set_serving(False)
            await self._grpc.stop(self.config.grace_s)
        for change in list(self._changes):
            change.cancel()
        if self._changes:
            await asyncio.gather(*self._changes, return_exceptions=True)
        await self.entry.close()
        await self.ps.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()

    async def __aenter__(self) -> UnifiedServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
