"""DenseServer: the dense process's lifecycle (gRPC server, /metrics, version loading, polling).

The lifecycle is every model server's (``core.model_server_lifecycle``). Start (idempotent): bind gRPC (health
NOT_SERVING) -> load the configured models -> poll loops (the file system's; the model config file's when it is
polled, ``core.config_file_poll``) -> health follows readiness. Stop (idempotent): stop the polls -> health
NOT_SERVING -> drain gRPC -> unload -> stop threads and /metrics.
``servicers()`` + ``open()`` / ``reload()`` / ``close()`` are the core without a gRPC server of its own (the
unified server hosts the servicers next to a PS's and an entry's, as it does the PS core).

Health (service "" and the PredictionService and ModelService names) is SERVING exactly while every configured
dense sub-model has an AVAILABLE version (with none configured, nothing to wait for: SERVING), as the PS's. It is
recomputed after the first load, each poll step and each HandleReloadConfigRequest; a reload whose
caller stopped waiting before it settled shows at the next poll step.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from prometheus_client import CollectorRegistry

from monolith_serving.core.config_file_poll import hosted_models_config_file
from monolith_serving.core.model_server_lifecycle import ModelServerLifecycle
from monolith_serving.dense.config import DenseModelConfig, DenseServerConfig, dense_models_from_proto
from monolith_serving.dense.metrics import DenseMetrics
from monolith_serving.dense.servicer import DenseModelServicer, DensePredictionServicer
from monolith_serving.dense.versions import DenseVersionManager

logger = logging.getLogger(__name__)


class DenseServer:
    def __init__(self, config: DenseServerConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = DenseMetrics(self.registry)
        self._executor = ThreadPoolExecutor(config.num_load_threads, thread_name_prefix="dense-load")
        self.versions = DenseVersionManager(metrics=self.metrics, executor=self._executor)
        self._lifecycle = ModelServerLifecycle(
            config,
            registry=self.registry,
            models=lambda: self.versions.models,
            model_kind="dense sub-model",
            step_failures=self.metrics.loop_step_failures,
            open_core=self.open,
            close_core=self._close_core,
            logger=logger,
            logged_as="dense",
            server_name="DenseServer",
        )
        self._config_file = hosted_models_config_file(
            config.model_config_file, dense_models_from_proto, self.versions, logger
        )

    @property
    def port(self) -> int:
        return self._lifecycle.port

    def servicers(self) -> tuple[DensePredictionServicer, DenseModelServicer]:
        """The gRPC faces of this dense core; ``start`` serves them, a unified server hosts them itself."""
        return DensePredictionServicer(self.versions, self.metrics), DenseModelServicer(
            self.versions, after_reload=self._lifecycle.follow_health
        )

    async def start(self) -> None:
        await self._lifecycle.start(*self.servicers())

    async def open(self) -> None:
        """The core without a gRPC server: load the configured models, then start the poll loops (the file
        system's; the model config file's when it is polled)."""
        if self._config_file is not None:
            await self._config_file.apply_at_start()
        else:
            await self.versions.apply_config(self.config.models)
        if self.config.file_system_poll_wait_s > 0:
            self._poll(self.config.file_system_poll_wait_s, "file_system", self.versions.refresh)
        if self._config_file is not None and self.config.model_config_file_poll_wait_s > 0:
            self._poll(self.config.model_config_file_poll_wait_s, "model_config_file", self._config_file.poll_step)

    def _poll(self, interval_s: float, step: str, action: Callable[[], Awaitable[None]]) -> None:
        self._lifecycle.poll(
            interval_s,
            action,
            step=step,
            failure_message=f"{step.replace('_', ' ')} poll step failed",
            task_name=f"dense-{step.replace('_', '-')}-poll",
        )

    async def reload(self, configs: Sequence[DenseModelConfig], *, fresh: bool = True) -> None:
        """An explicit reload of a hosting server (its HandleReloadConfigRequest, already checked): replaces the
        hosted models and returns once their versions are settled; latest_once may choose again, failed versions
        retry (``fresh``; without it only the models whose config changed start over)."""
        try:
            await self.versions.apply_config(configs, fresh=fresh)
        finally:
            await self._lifecycle.follow_health()

    async def stop(self) -> None:
        await self._lifecycle.stop()

    async def close(self) -> None:
        """Stops the core opened by ``open`` (poll, versions, load threads). Idempotent."""
        await self._lifecycle.close()

    async def _close_core(self) -> None:
        await self.versions.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> DenseServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
