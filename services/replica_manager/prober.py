"""Asks one replica whether it still serves: gRPC health ``Check`` plus ``GetModelStatus``.

Real TF Serving has no gRPC health service and some servers have no ModelService; UNIMPLEMENTED from
either call is therefore not a failure, as long as the other one answered. A replica *answers* when at
least one call returned; it is *healthy* when it answered, health (if present) is SERVING and the model
(if asked and present) has an AVAILABLE version.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_serving.core.model_state import ModelState
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

__all__ = ["GrpcReplicaProber", "ProbeResult", "ProbeTarget"]


@dataclass(frozen=True)
class ProbeTarget:
    """What to probe: a gRPC address and, for v1 replicas, the sub-model name its server knows."""

    address: str
    model_name: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    version: int | None = None  # the AVAILABLE version (highest), else the newest one reported
    error: str | None = None  # why it is not healthy


def _choose_version(response: get_model_status_pb2.GetModelStatusResponse) -> tuple[bool, int | None]:
    available = [s.version for s in response.model_version_status if int(s.state) == ModelState.AVAILABLE]
    if available:
        return True, max(available)
    versions = [s.version for s in response.model_version_status]
    return False, max(versions) if versions else None


class GrpcReplicaProber:
    """Probes replicas over cached insecure channels; use from one asyncio loop.

    A failed probe closes its channel so the next probe dials afresh: gRPC's own reconnect backoff (up to
    minutes) must not delay noticing a replica restarted on the same port.
    """

    def __init__(self, *, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
        return channel

    async def _drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def retain(self, addresses: set[str]) -> None:
        """Close channels of addresses no longer probed."""
        for address in [a for a in self._channels if a not in addresses]:
            await self._drop(address)

    async def close(self) -> None:
        await self.retain(set())

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        result = await self._probe(target)
        if not result.healthy:
            await self._drop(target.address)
        return result

    async def _probe(self, target: ProbeTarget) -> ProbeResult:
        channel = self._channel(target.address)
        answered = False
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self._timeout_s
            )
            answered = True
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return ProbeResult(
                    healthy=False, error=f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                return ProbeResult(healthy=False, error=f"health check: {exc.code().name}")
        if target.model_name is None:
            return ProbeResult(healthy=answered, error=None if answered else "no health service")
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = target.model_name
        try:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
            status = await stub.GetModelStatus(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED and answered:
                return ProbeResult(healthy=True)
            return ProbeResult(healthy=False, error=f"GetModelStatus({target.model_name}): {exc.code().name}")
        available, version = _choose_version(status)
        if not available:
            return ProbeResult(healthy=False, version=version, error=f"{target.model_name} has no AVAILABLE version")
        return ProbeResult(healthy=True, version=version)

    async def __aenter__(self) -> GrpcReplicaProber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.close()
