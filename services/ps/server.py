"""PsServer: the PS process's lifecycle (gRPC server, /metrics, version loading, polling).

Start: bind gRPC (health NOT_SERVING) -> load the configured models -> poll loops -> health follows readiness.
Stop (idempotent): stop polls -> health NOT_SERVING -> drain gRPC -> unload -> stop threads and /metrics.
``servicers()`` + ``open()`` / ``close()`` are the core without a gRPC server of its own (the unified
server hosts the servicers next to an entry's).

Health (service "" and the PredictionService and ModelService names) is SERVING exactly while every configured
sub-model has an AVAILABLE version: not on an empty export, a missing base path, corrupt dumps, nor under the
model manager's "serve nothing" (``specific {}``). A PS configured with no sub-model at all is SERVING: it has
nothing to wait for, and no load could ever make it ready. It is recomputed after every change to the versions
(the first load, each poll step, each reload), as the entry recomputes its own after each control-loop step.
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
from monolith_serving.core.model_health import ModelHealth
from monolith_serving.core.run_to_end import run_to_end
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

_PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
_MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
# The health services that follow readiness: the whole server ("") and each service it hosts by name.
_HEALTH_SERVICES = ("", _PREDICTION_SERVICE, _MODEL_SERVICE)


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
            max_pending_sync_bytes=config.max_pending_sync_bytes,
        )
        self._grpc: GrpcServer | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Reloads run as tasks of their own, so that health follows one whose caller stopped waiting (see ``reload``).
        self._reloads: set[asyncio.Task[None]] = set()
        self._health = ModelHealth(lambda: self.versions.models, _HEALTH_SERVICES, "sub-model")
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

    async def reload(self, configs: Sequence[SubModelConfig], *, fresh: bool = True) -> None:
        """An explicit reload (HandleReloadConfigRequest): latest_once may choose again, failed versions retry
        (``fresh``; without it only the models whose config changed start over, as a file poll applies a file).

        Returns once the versions are settled and health follows them. A caller that stops waiting (a gRPC
        deadline) does not stop the change (see ``VersionLifecycle.apply_config``), nor health following it.
        """
        await run_to_end(self._reload_then_follow_health(configs, fresh), "reload", self._reloads)

    async def _reload_then_follow_health(self, configs: Sequence[SubModelConfig], fresh: bool) -> None:
        try:
            await self.versions.apply_config(configs, fresh=fresh)
        finally:
            await self._follow_health()

    async def _follow_health(self) -> None:
        """Sets health to ``ready()``; a no-op without a gRPC server of its own or once stopping."""
        await self._health.follow(None if self._stopped else self._grpc)

    def servicers(self) -> tuple[PsPredictionServicer, PsModelServicer]:
        """The gRPC faces of this PS core; ``start`` serves them, a unified server hosts them itself."""
        return PsPredictionServicer(self.core, self.metrics), PsModelServicer(self.core, self.reload)

    async def start(self) -> None:
        prediction, model_service = self.servicers()
        options = GrpcServerOptions(
            port=self.config.port,
            host=self.config.host,
            reflection_services=(_PREDICTION_SERVICE, _MODEL_SERVICE),
            channel_arguments=self.config.grpc_channel_arguments,
            socket_path=self.config.grpc_socket_path,
        )

        def add_prediction(server: grpc.aio.Server) -> None:
            add_prediction_servicer(prediction, server)

        def add_model(server: grpc.aio.Server) -> None:
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_service, server)  # type: ignore[no-untyped-call]

        self._grpc = build_server(options, [add_prediction, add_model], registry=self.registry)
        await self._grpc.start()
        logger.info("PS gRPC on port %d", self._grpc.port)
        if self.config.metrics_port:
            self._metrics_endpoint = serve_metrics(self.config.metrics_port, self.registry, host=self.config.host)
        await self.open()
        await self._follow_health()

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
        """Runs ``action`` every ``interval_s``, then health follows; a failing step is logged and counted, never
        stops the loop."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("poll step %s failed", step)
                self.metrics.loop_step_failures.labels(step).inc()
            await self._follow_health()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._cancel_tasks()
        if self._grpc is not None:
            await self._health.stop(self._grpc)
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
        """Stops the core opened by ``open`` (poll loops, reloads, versions, load threads). Idempotent."""
        await self._cancel_tasks()
        if self._closed:
            return
        self._closed = True
        await self.versions.close()  # cancels the changes that reloads still wait for
        if self._reloads:
            await asyncio.gather(*self._reloads, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> PsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
