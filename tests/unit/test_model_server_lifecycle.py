"""core.model_server_lifecycle, which the PS and the dense server share: a poll step that raises is logged under the
owner's logger and counted, and its loop goes on with health following the models; ``start`` and ``stop`` are
idempotent and the core is closed once, after its polls; the PS, which once bound a second server on a second
``start``, keeps its one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from monolith_serving.core.grpc_server import ChannelArguments
from monolith_serving.core.model_health import HostedModel
from monolith_serving.core.model_server_lifecycle import HEALTH_SERVICES, ModelServerLifecycle
from monolith_serving.proto_gen.tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from monolith_serving.ps.config import PsConfig
from monolith_serving.ps.server import PsServer

_OWNER_LOGGER = "monolith_serving.tests.owner"


@dataclass(frozen=True)
class _Config:
    port: int = 0
    host: str = "127.0.0.1"
    grpc_socket_path: Path | None = None
    grpc_channel_arguments: ChannelArguments = ()
    metrics_port: int = 0
    shutdown_grace_s: float = 0.5


class _Model:
    def __init__(self) -> None:
        self.version: int | None = None

    def serving(self) -> int | None:
        return self.version


class _Owner:
    """A core as the PS and the dense server are one: it records what the lifecycle asks of it."""

    def __init__(self, poll_wait_s: float = 0.0) -> None:
        self.registry = CollectorRegistry()
        self.failures = Counter("owner_poll_step_failures", "failed steps", ["step"], registry=self.registry)
        self.model = _Model()
        self.events: list[str] = []
        self.steps = 0
        self._poll_wait_s = poll_wait_s
        self.lifecycle = ModelServerLifecycle(
            _Config(),
            registry=self.registry,
            models=self.models,
            model_kind="owner model",
            step_failures=self.failures,
            open_core=self.open,
            close_core=self.close_core,
            logger=logging.getLogger(_OWNER_LOGGER),
            logged_as="owner",
            server_name="OwnerServer",
        )

    def models(self) -> Mapping[str, HostedModel]:
        return {"m": self.model}

    async def open(self) -> None:
        self.events.append("open")
        if self._poll_wait_s > 0:
            self.lifecycle.poll(
                self._poll_wait_s,
                self.step,
                step="file_system",
                failure_message="owner step failed",
                task_name="owner-poll",
            )

    async def step(self) -> None:
        self.steps += 1
        raise OSError("file system went away")

    async def close_core(self) -> None:
        self.events.append("close")

    async def start(self) -> None:
        await self.lifecycle.start(
            prediction_service_pb2_grpc.PredictionServiceServicer(),
            model_service_pb2_grpc.ModelServiceServicer(),
        )


async def _health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return int(reply.status)


async def _until_serving(port: int, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await _health(port, "") != health_pb2.HealthCheckResponse.SERVING:
        if loop.time() > deadline:
            raise AssertionError(f"health not SERVING within {timeout_s} s")
        await asyncio.sleep(0.02)


def test_a_failing_poll_step_is_logged_and_counted_and_the_loop_goes_on_with_health_following(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        owner = _Owner(poll_wait_s=0.05)
        with caplog.at_level(logging.INFO, logger=_OWNER_LOGGER):
            await owner.start()
            try:
                for service in HEALTH_SERVICES:
                    assert await _health(owner.lifecycle.port, service) == health_pb2.HealthCheckResponse.NOT_SERVING
                while owner.steps < 2:
                    await asyncio.sleep(0.01)
                owner.model.version = 1  # what a step that failed after loading a version leaves
                await _until_serving(owner.lifecycle.port)
                for service in HEALTH_SERVICES:
                    assert await _health(owner.lifecycle.port, service) == health_pb2.HealthCheckResponse.SERVING
            finally:
                await owner.lifecycle.stop()
        steps = owner.steps
        assert steps >= 2 and owner.failures.labels("file_system")._value.get() == steps
        failed = [r for r in caplog.records if r.getMessage() == "owner step failed"]
        assert len(failed) == steps and all(r.name == _OWNER_LOGGER and r.exc_info is not None for r in failed)
        started = [r.getMessage() for r in caplog.records if r.name == _OWNER_LOGGER and "gRPC on port" in r.msg]
        assert started == [f"owner gRPC on port {owner.lifecycle.port}"]

    asyncio.run(scenario())


def test_start_and_stop_are_idempotent_and_the_core_closes_once_after_its_polls() -> None:
    async def scenario() -> None:
        owner = _Owner(poll_wait_s=60.0)
        with pytest.raises(RuntimeError, match="OwnerServer is not started"):
            _ = owner.lifecycle.port
        await owner.start()
        port = owner.lifecycle.port
        await owner.start()
        assert owner.lifecycle.port == port and owner.events == ["open"]
        polls = [task for task in asyncio.all_tasks() if task.get_name() == "owner-poll"]
        assert len(polls) == 1
        await owner.lifecycle.stop()
        assert polls[0].cancelled()
        await owner.lifecycle.stop()
        await owner.lifecycle.close()
        assert owner.events == ["open", "close"]

    asyncio.run(scenario())


def test_a_second_ps_start_keeps_the_server_it_started() -> None:
    async def scenario() -> None:
        async with PsServer(PsConfig(port=0, host="127.0.0.1", models_from_reload=True)) as server:
            port = server.port
            await server.start()
            assert server.port == port
            assert await _health(port, "") == health_pb2.HealthCheckResponse.SERVING  # nothing to wait for

    asyncio.run(scenario())
