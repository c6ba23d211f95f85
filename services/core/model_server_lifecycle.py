"""The process around a model-server core, the same for the PS and the dense server: TF Serving's PredictionService
and ModelService on a gRPC server of its own, /metrics, health that follows the models, the poll loops, and the stop.

Start (idempotent): bind gRPC (health NOT_SERVING) -> /metrics -> open the core (its first load, then its poll
loops) -> health follows the models. A poll step that raises is logged with its traceback and counted, never ends
its loop; health follows after every step, failed or not. Stop (idempotent): health stops following -> cancel the
polls -> health NOT_SERVING -> drain gRPC -> close the core -> stop /metrics.

A unified server hosts the same cores without this: it serves their ``servicers()`` on its own gRPC server and
calls their ``open()`` / ``reload()`` / ``close()``; their polls still run, and health following them is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter

from monolith_serving.core.grpc_server import ChannelArguments, GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.core.model_health import HostedModel, ModelHealth
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
# The health services that follow the models: the whole server ("") and each service it hosts by name.
HEALTH_SERVICES = ("", PREDICTION_SERVICE, MODEL_SERVICE)

AddPredictionServicer = Callable[[prediction_service_pb2_grpc.PredictionServiceServicer, grpc.aio.Server], None]


def _add_generated_prediction_servicer(
    servicer: prediction_service_pb2_grpc.PredictionServiceServicer, server: grpc.aio.Server
) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


class ServerConfig(Protocol):
    """What the lifecycle reads of a server's config (``PsConfig``, ``DenseServerConfig``)."""

    @property
    def port(self) -> int: ...

    @property
    def host(self) -> str: ...

    @property
    def grpc_socket_path(self) -> Path | None: ...

    @property
    def grpc_channel_arguments(self) -> ChannelArguments: ...

    @property
    def metrics_port(self) -> int: ...

    @property
    def shutdown_grace_s(self) -> float: ...


class ModelServerLifecycle:
    """One server's gRPC server, /metrics, health, poll loops and stop order; its owner keeps the core.

    ``open_core`` loads what the config names and starts the polls (``poll``); ``close_core`` releases the core
    (run once, after the polls are cancelled). ``models`` and ``model_kind`` are health's (``core.model_health``):
    what it follows, and how its log lines name one model. ``step_failures`` counts failed poll steps by step.
    ``logger`` is the owner's, so that its lines keep naming the service's module; ``logged_as`` names the service
    in them ("PS", "dense") and ``server_name`` in errors. ``start``, ``stop`` and ``close`` are idempotent; all
    run on the event loop.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        registry: CollectorRegistry,
        models: Callable[[], Mapping[str, HostedModel]],
        model_kind: str,
        step_failures: Counter,
        open_core: Callable[[], Awaitable[None]],
        close_core: Callable[[], Awaitable[None]],
        logger: logging.Logger,
        logged_as: str,
        server_name: str,
    ) -> None:
        self._config = config
        self._registry = registry
        self._health = ModelHealth(models, HEALTH_SERVICES, model_kind)
        self._step_failures = step_failures
        self._open_core = open_core
        self._close_core = close_core
        self._log = logger
        self._logged_as = logged_as
        self._server_name = server_name
        self._grpc: GrpcServer | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._polls: list[asyncio.Task[None]] = []
        self._stopped = False
        self._closed = False

    @property
    def port(self) -> int:
        if self._grpc is None:
            raise RuntimeError(f"{self._server_name} is not started")
        return self._grpc.port

    async def start(
        self,
        prediction: prediction_service_pb2_grpc.PredictionServiceServicer,
        model_service: model_service_pb2_grpc.ModelServiceServicer,
        *,
        add_prediction: AddPredictionServicer = _add_generated_prediction_servicer,
    ) -> None:
        """Serves ``prediction`` (registered by ``add_prediction``) and ``model_service``, then opens the core."""
        if self._grpc is not None:
            return

        def add_prediction_to(server: grpc.aio.Server) -> None:
            add_prediction(prediction, server)

        def add_model_service_to(server: grpc.aio.Server) -> None:
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_service, server)  # type: ignore[no-untyped-call]

        options = GrpcServerOptions(
            port=self._config.port,
            host=self._config.host,
            reflection_services=(PREDICTION_SERVICE, MODEL_SERVICE),
            channel_arguments=self._config.grpc_channel_arguments,
            socket_path=self._config.grpc_socket_path,
        )
        self._grpc = build_server(options, [add_prediction_to, add_model_service_to], registry=self._registry)
        await self._grpc.start()
        self._log.info("%s gRPC on port %d", self._logged_as, self._grpc.port)
        if self._config.metrics_port:
            self._metrics_endpoint = serve_metrics(self._config.metrics_port, self._registry, host=self._config.host)
        await self._open_core()
        await self.follow_health()

    async def follow_health(self) -> None:
        """Sets health to whether every model has an AVAILABLE version; a no-op without a gRPC server of its own
        (a core hosted by a unified server) or once stopping."""
        await self._health.follow(None if self._stopped else self._grpc)

    def poll(
        self,
        interval_s: float,
        action: Callable[[], Awaitable[None]],
        *,
        step: str,
        failure_message: str,
        task_name: str | None = None,
    ) -> None:
        """Runs ``action`` every ``interval_s`` until the core closes, then health follows. A step that raises is
        logged as ``failure_message`` with its traceback and counted under ``step``; the loop goes on."""
        self._polls.append(asyncio.create_task(self._every(interval_s, action, step, failure_message), name=task_name))

    async def _every(
        self, interval_s: float, action: Callable[[], Awaitable[None]], step: str, failure_message: str
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await action()
            except Exception:
                self._log.exception(failure_message)
                self._step_failures.labels(step).inc()
            await self.follow_health()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._cancel_polls()
        if self._grpc is not None:
            await self._health.stop(self._grpc)
            await self._grpc.stop(self._config.shutdown_grace_s)
        await self.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()

    async def close(self) -> None:
        """Cancels the polls, then closes the core once."""
        await self._cancel_polls()
        if self._closed:
            return
        self._closed = True
        await self._close_core()

    async def _cancel_polls(self) -> None:
        polls, self._polls = self._polls, []
        for poll in polls:
            poll.cancel()
        for poll in polls:
            with contextlib.suppress(asyncio.CancelledError):
                await poll
