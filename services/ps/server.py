"""PsServer: the PS process's lifecycle (gRPC server, /metrics, version loading, polling).

Start: bind gRPC (health NOT_SERVING) -> load the configured models -> poll loops -> health SERVING.
Stop (idempotent): stop polls -> health NOT_SERVING -> drain gRPC -> unload -> stop threads and /metrics.
``servicers()`` + ``open()`` / ``close()`` are the core without a gRPC server of its own (the unified
server hosts the servicers next to an entry's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import grpc
from prometheus_client import CollectorRegistry

from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.core.grpc_server import GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
)
from monolith_serving.ps.config import PsConfig, SubModelConfig, sub_models_from_proto
from monolith_serving.ps.core import PsCore, replay_updates
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.servicer import PsModelServicer, PsPredictionServicer, add_prediction_servicer
from monolith_serving.ps.version_manager import VersionStateManager

logger = logging.getLogger(__name__)


class PsServer:
    def __init__(self, config: PsConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = PsMetrics(self.registry)
        self._executor = ThreadPoolExecutor(config.num_load_threads, thread_name_prefix="ps-load")
        self.versions = VersionStateManager(metrics=self.metrics, executor=self._executor, replay=replay_updates)
        self.core = PsCore(
            versions=self.versions,
            metrics=self.metrics,
            num_ps=config.num_ps,
            max_fids_per_request=config.max_fids_per_request,
        )
        self._grpc: GrpcServer | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._file_configs: tuple[SubModelConfig, ...] | None = None
        self._stopped = False
        self._closed = False

    @property
    def port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("PsServer is not started")
        return self._grpc.port

    def _read_config_file(self) -> tuple[SubModelConfig, ...]:
        assert self.config.model_config_file is not None
        return sub_models_from_proto(read_model_server_config(self.config.model_config_file))

    async def reload(self, configs: Sequence[SubModelConfig]) -> None:
        """An explicit reload (HandleReloadConfigRequest): latest_once may choose again, failed versions retry."""
        await self.versions.apply_config(configs, fresh=True)

    def servicers(self) -> tuple[PsPredictionServicer, PsModelServicer]:
        """The gRPC faces of this PS core; ``start`` serves them, a unified server hosts them itself."""
        return PsPredictionServicer(self.core, self.metrics), PsModelServicer(self.core, self.reload)

    async def start(self) -> None:
        prediction, model_service = self.servicers()
        options = GrpcServerOptions(
            port=self.config.port,
            host=self.config.host,
            reflection_services=(
                prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
                model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
            ),
        )

        def add_prediction(server: grpc.aio.Server) -> None:
            add_prediction_servicer(prediction, server)

        def add_model(server: grpc.aio.Server) -> None:
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_service, server)  # type: ignore[no-untyped-call]

        self._grpc = build_server(options, [add_prediction, add_model])
        await self._grpc.start()
        logger.info("PS gRPC on port %d", self._grpc.port)
        if self.config.metrics_port:
            self._metrics_endpoint = serve_metrics(self.config.metrics_port, self.registry, host=self.config.host)
        await self.open()
        await self._grpc.set_serving(True)

    async def open(self) -> None:
        """The core without a gRPC server: load the configured models, then start the poll loops."""
        if self.config.model_config_file is not None:
            self._file_configs = self._read_config_file()
            await self.versions.apply_config(self._file_configs)
        else:
            await self.versions.apply_config(self.config.models)
        if self.config.file_system_poll_wait_s > 0:
            self._tasks.append(
                asyncio.create_task(
                    self._every(self.config.file_system_poll_wait_s, "file_system", self.versions.refresh)
                )
            )
        if self.config.model_config_file is not None and self.config.model_config_file_poll_wait_s > 0:
            self._tasks.append(
                asyncio.create_task(
                    self._every(self.config.model_config_file_poll_wait_s, "model_config_file", self._poll_config_file)
                )
            )

    async def _poll_config_file(self) -> None:
        configs = self._read_config_file()
        if configs != self._file_configs:
            logger.info("model config file changed: applying it")
            self._file_configs = configs
            await self.versions.apply_config(configs)

    async def _every(self, interval_s: float, step: str, action: Callable[[], Awaitable[None]]) -> None:
        """Runs ``action`` every ``interval_s``; a failing step is logged and counted, never stops the loop."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("poll step %s failed", step)
                self.metrics.loop_step_failures.labels(step).inc()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._cancel_tasks()
        if self._grpc is not None:
            await self._grpc.set_serving(False)
            await self._grpc.stop(self.config.shutdown_grace_s)
        await self.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()

    async def _cancel_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stops the core opened by ``open`` (poll loops, versions, load threads). Idempotent."""
        await self._cancel_tasks()
        if self._closed:
            return
        self._closed = True
        await self.versions.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> PsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
