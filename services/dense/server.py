"""DenseServer: the dense process's lifecycle (gRPC server, /metrics, version loading, polling).

Start: bind gRPC (health NOT_SERVING) -> load the configured models -> health follows readiness -> file-system poll.
Stop (idempotent): health NOT_SERVING -> stop the poll -> drain gRPC -> unload -> stop /metrics and threads.

Health (service "" and the PredictionService and ModelService names) is SERVING exactly while every configured
dense sub-model has an AVAILABLE version (with none configured, nothing to wait for: SERVING), as the PS's. It is
recomputed after the first load, each file-system poll step and each HandleReloadConfigRequest; a reload whose
caller stopped waiting before it settled shows at the next poll step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import grpc
from prometheus_client import CollectorRegistry

from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.core.grpc_server import GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.core.model_health import ModelHealth
from monolith_serving.dense.config import DenseServerConfig, dense_models_from_proto
from monolith_serving.dense.metrics import DenseMetrics
from monolith_serving.dense.servicer import DenseModelServicer, DensePredictionServicer
from monolith_serving.dense.versions import DenseVersionManager
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

logger = logging.getLogger(__name__)

_PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
_MODEL_SERVICE = "tensorflow.serving.ModelService"
# The health services that follow readiness: the whole server ("") and each service it hosts by name.
_HEALTH_SERVICES = ("", _PREDICTION_SERVICE, _MODEL_SERVICE)


class DenseServer:
    def __init__(self, config: DenseServerConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = DenseMetrics(self.registry)
        self._executor = ThreadPoolExecutor(config.num_load_threads, thread_name_prefix="dense-load")
        self.versions = DenseVersionManager(metrics=self.metrics, executor=self._executor)
        self._grpc: GrpcServer | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._poll: asyncio.Task[None] | None = None
        self._health = ModelHealth(lambda: self.versions.models, _HEALTH_SERVICES, "dense sub-model")
        self._stopped = False

    @property
    def port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("DenseServer is not started")
        return self._grpc.port

    async def start(self) -> None:
        if self._grpc is not None:
            return
        prediction = DensePredictionServicer(self.versions, self.metrics)
        models = DenseModelServicer(self.versions, after_reload=self._follow_health)

        def add_prediction(server: grpc.aio.Server) -> None:
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)  # type: ignore[no-untyped-call]

        def add_models(server: grpc.aio.Server) -> None:
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)  # type: ignore[no-untyped-call]

        options = GrpcServerOptions(
            port=self.config.port,
            host=self.config.host,
            reflection_services=(_PREDICTION_SERVICE, _MODEL_SERVICE),
            channel_arguments=self.config.grpc_channel_arguments,
        )
        self._grpc = build_server(options, [add_prediction, add_models], registry=self.registry)
        await self._grpc.start()
        logger.info("dense gRPC on port %d", self._grpc.port)
        if self.config.metrics_port:
            self._metrics_endpoint = serve_metrics(self.config.metrics_port, self.registry, host=self.config.host)
        configs = self.config.models
        if self.config.model_config_file is not None:
            configs = dense_models_from_proto(read_model_server_config(self.config.model_config_file))
        await self.versions.apply_config(configs)
        await self._follow_health()
        if self.config.file_system_poll_wait_s > 0:
            self._poll = asyncio.create_task(self._poll_loop(), name="dense-file-system-poll")

    async def _follow_health(self) -> None:
        """Sets health to ``ready()``; a no-op without a gRPC server of its own or once stopping."""
        await self._health.follow(None if self._stopped else self._grpc)

    async def _poll_loop(self) -> None:
        """Looks for new versions, then health follows; a failing step is logged and counted, never stops the loop."""
        while True:
            await asyncio.sleep(self.config.file_system_poll_wait_s)
            try:
                await self.versions.refresh()
            except Exception:
                logger.exception("file-system poll step failed")
                self.metrics.loop_step_failures.labels("file_system").inc()
            await self._follow_health()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        if self._grpc is not None:
            await self._health.stop(self._grpc)
            await self._grpc.stop(self.config.shutdown_grace_s)
        await self.versions.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> DenseServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
