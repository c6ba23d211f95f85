"""PsServer: the PS process's lifecycle (gRPC server, /metrics, version loading, polling).

The lifecycle is every model server's (``core.model_server_lifecycle``). Start (idempotent): bind gRPC (health
NOT_SERVING) -> load the configured models -> poll loops (the file system's; the model config file's when it is
polled) -> health follows readiness. Stop (idempotent): stop polls -> health NOT_SERVING -> drain gRPC -> unload
-> stop threads and /metrics.
``servicers()`` + ``open()`` / ``reload()`` / ``close()`` are the core without a gRPC server of its own (the unified
server hosts the servicers next to a dense core's and an entry's).

Health (service "" and the PredictionService and ModelService names) is SERVING exactly while every configured
sub-model has an AVAILABLE version: not on an empty export, a missing base path, corrupt dumps, nor under the
model manager's "serve nothing" (``specific {}``). A PS configured with no sub-model at all is SERVING: it has
nothing to wait for, and no load could ever make it ready. It is recomputed after every change to the versions
(the first load, each poll step, each reload), as the entry recomputes its own after each control-loop step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from prometheus_client import CollectorRegistry

from monolith_serving.core.config_file_poll import hosted_models_config_file
from monolith_serving.core.model_server_lifecycle import ModelServerLifecycle
from monolith_serving.core.run_to_end import run_to_end
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
            max_pending_sync_bytes=config.max_pending_sync_bytes,
        )
        self._lifecycle = ModelServerLifecycle(
            config,
            registry=self.registry,
            models=lambda: self.versions.models,
            model_kind="sub-model",
            step_failures=self.metrics.loop_step_failures,
            open_core=self.open,
            close_core=self._close_core,
            logger=logger,
            logged_as="PS",
            server_name="PsServer",
        )
        # Reloads run as tasks of their own, so that health follows one whose caller stopped waiting (see ``reload``).
        self._reloads: set[asyncio.Task[None]] = set()
        self._config_file = hosted_models_config_file(
            config.model_config_file, sub_models_from_proto, self.versions, logger
        )

    @property
    def port(self) -> int:
        return self._lifecycle.port

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
            await self._lifecycle.follow_health()

    def servicers(self) -> tuple[PsPredictionServicer, PsModelServicer]:
        """The gRPC faces of this PS core; ``start`` serves them, a unified server hosts them itself."""
        return PsPredictionServicer(self.core, self.metrics), PsModelServicer(self.core, self.reload)

    async def start(self) -> None:
        prediction, model_service = self.servicers()
        await self._lifecycle.start(prediction, model_service, add_prediction=add_prediction_servicer)

    async def open(self) -> None:
        """The core without a gRPC server: load the configured models, then start the poll loops."""
        if self._config_file is not None:
            await self._config_file.apply_at_start()
        else:
            await self.versions.apply_config(self.config.models)
        if self.config.file_system_poll_wait_s > 0:
            self._poll(self.config.file_system_poll_wait_s, "file_system", self.versions.refresh)
        if self._config_file is not None and self.config.model_config_file_poll_wait_s > 0:
            self._poll(self.config.model_config_file_poll_wait_s, "model_config_file", self._config_file.poll_step)

    def _poll(self, interval_s: float, step: str, action: Callable[[], Awaitable[None]]) -> None:
        self._lifecycle.poll(interval_s, action, step=step, failure_message=f"poll step {step} failed")

    async def stop(self) -> None:
        await self._lifecycle.stop()

    async def close(self) -> None:
        """Stops the core opened by ``open`` (poll loops, reloads, versions, load threads). Idempotent."""
        await self._lifecycle.close()

    async def _close_core(self) -> None:
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
