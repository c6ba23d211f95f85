"""DenseServer: the dense process's lifecycle (gRPC server, /metrics, version loading, polling).

Start: bind gRPC (health NOT_SERVING) -> load the configured models -> health follows readiness -> file-system poll.
Stop (idempotent): health NOT_SERVING -> stop the poll -> drain gRPC -> unload -> stop /metrics and threads.
``servicers()`` + ``open()`` / ``reload()`` / ``close()`` are the core without a gRPC server of its own (the
unified server hosts the servicers next to a PS's and an entry's, as it does the PS core).

Health (service "" and the PredictionService and ModelService names) is SERVING exactly while every configured
dense sub-model has an AVAILABLE version (with none configured, nothing to wait for: SERVING), as the PS's. It is
recomputed after the first load, each file-system poll step and each HandleReloadConfigRequest; a reload whose
caller stopped waiting before it settled shows at the next poll step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import grpc
from prometheus_client import CollectorRegistry

from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.core.grpc_server import GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.core.model_health import ModelHealth
from monolith_serving.dense.config import DenseModelConfig, DenseServerConfig, dense_models_from_proto
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
        self._closed = False

    @property
    def port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("DenseServer is not started")
        return self._grpc.port

    def servicers(self) -> tuple[DensePredictionServicer, DenseModelServicer]:
        """The gRPC faces of this dense core; ``start`` serves them, a unified server hosts them itself."""
        return DensePredictionServicer(self.versions, self.metrics), DenseModelServicer(
            self.versions, after_reload=self._follow_health
        )

    async def start(self) -> None:
        if self._grpc is not None:
            return
        prediction, models = self.servicers()

        def add_prediction(server: grpc.aio.Server) -> None:
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)  # type: ignore[no-untyped-call]

        def add_models(server: grpc.aio.Server) -> None:
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)  # type: ignore[no-untyped-call]

        options = GrpcServerOptions(
            port=self.config.port,
            host=self.config.host,
            reflection_services=(_PREDICTION_SERVICE, _MODEL_SERVICE),
            channel_arguments=self.config.grpc_channel_arguments,
            socket_path=self.config.grpc_socket_path,
        )
        self._grpc = build_server(options, [add_prediction, add_models], registry=self.registry)
        await self._grpc.start()
        logger.info("dense gRPC on port %d", self._grpc.port)
        if self.config.metrics_port:
            self._metrics_endpoint = serve_metrics(self.config.metrics_port, self.registry, host=self.config.host)
        await self.open()
        await self._follow_health()

    async def open(self) -> None:
        """The core without a gRPC server: load the configured models, then start the file-system poll."""
        configs = self.config.models
        if self.config.model_config_file is not None:
            configs = dense_models_from_proto(read_model_server_config(self.config.model_config_file))
        await self.versions.apply_config(configs)
        if self.config.file_system_poll_wait_s > 0:
            self._poll = asyncio.create_task(self._poll_loop(), name="dense-file-system-poll")

    async def reload(self, configs: Sequence[DenseModelConfig], *, fresh: bool = True) -> None:
        """An explicit reload of a hosting server (its HandleReloadConfigRequest, already checked): replaces the
        hosted models and returns once their versions are settled; latest_once may choose again, failed versions
        retry (``fresh``; without it only the models whose config changed start over)."""
        try:
            await self.versions.apply_config(configs, fresh=fresh)
        finally:
            await self._follow_health()

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
        await self._cancel_poll()
        if self._grpc is not None:
            await self._health.stop(self._grpc)
            await self._grpc.stop(self.config.shutdown_grace_s)
        await self.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()

    async def _cancel_poll(self) -> None:
        poll, self._poll = self._poll, None
        if poll is not None:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll

    async def close(self) -> None:
        """Stops the core opened by ``open`` (poll, versions, load threads). Idempotent."""
        await self._cancel_poll()
        if self._closed:
            return
        self._closed = True
        await self.versions.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> DenseServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
