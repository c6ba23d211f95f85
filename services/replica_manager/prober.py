"""Asks one replica whether it still serves: gRPC health ``Check`` plus ``GetModelStatus``, concurrently.

Real TF Serving has no gRPC health service and some servers have no ModelService; UNIMPLEMENTED from
either call is therefore not a failure, as long as the other one answered. A replica *answers* when at
least one call returned; it is *healthy* when it answered, health (if present) is SERVING and the model
(if asked and present) has an AVAILABLE version.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_serving.core.cancellation import cancelled_by_caller
from monolith_serving.core.model_state import ModelState
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

__all__ = ["GrpcReplicaProber", "ProbeResult", "ProbeTarget"]

_Reply = TypeVar("_Reply")
HealthReply: TypeAlias = health_pb2.HealthCheckResponse | grpc.StatusCode
StatusReply: TypeAlias = get_model_status_pb2.GetModelStatusResponse | grpc.StatusCode | None  # None: not asked


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


async def _reply_or_code(call: Awaitable[_Reply]) -> _Reply | grpc.StatusCode:
    """The call's reply, or the status code it failed with.

    CANCELLED also stands for a call whose channel was closed under it: gRPC then raises CancelledError
    although nobody cancelled this task, and that must read as a failed call, not as a shutdown.
    """
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    except asyncio.CancelledError:
        if cancelled_by_caller():
            raise
        return grpc.StatusCode.CANCELLED


def _judge(target: ProbeTarget, health: HealthReply, status: StatusReply) -> ProbeResult:
    """Combine the two answers into one verdict (see the module docstring); health failures come first."""
    if isinstance(health, grpc.StatusCode) and health is not grpc.StatusCode.UNIMPLEMENTED:
        return ProbeResult(healthy=False, error=f"health check: {health.name}")
    health_answered = not isinstance(health, grpc.StatusCode)
    if isinstance(health, health_pb2.HealthCheckResponse) and health.status != health_pb2.HealthCheckResponse.SERVING:
        return ProbeResult(
            healthy=False, error=f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}"
        )
    if status is None:
        return ProbeResult(healthy=health_answered, error=None if health_answered else "no health service")
    if isinstance(status, grpc.StatusCode):
        if status is grpc.StatusCode.UNIMPLEMENTED and health_answered:
            return ProbeResult(healthy=True)
        return ProbeResult(healthy=False, error=f"GetModelStatus({target.model_name}): {status.name}")
    available, version = _choose_version(status)
    if not available:
        return ProbeResult(healthy=False, version=version, error=f"{target.model_name} has no AVAILABLE version")
    return ProbeResult(healthy=True, version=version)


class _SharedChannel:
    """One address's channel and the number of probes using it now.

    Several targets share an address (one v1 PS process serves ps_0, ps_2, ... on one port) and are probed
    at the same time; closing the channel cancels every call on it, so it is closed only once it is both
    retired and unused.
    """

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.users = 0
        self.retired = False

    async def close_if_idle(self) -> None:
        if self.retired and self.users == 0:
            await self.channel.close()


class GrpcReplicaProber:
    """Probes replicas over cached insecure channels, one per address; use from one asyncio loop.

    A failed probe retires its channel so the next probe dials afresh: gRPC's own reconnect backoff (up to
    minutes) must not delay noticing a replica restarted on the same port. A retired channel is closed when
    the last probe still using it has finished, never under a running call.
    """

    def __init__(self, *, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._timeout_s = timeout_s
        self._channels: dict[str, _SharedChannel] = {}  # the current (not retired) channel per address

    def _acquire(self, address: str) -> _SharedChannel:
        shared = self._channels.get(address)
        if shared is None:
            shared = self._channels[address] = _SharedChannel(address)
        shared.users += 1
        return shared

    async def _release(self, shared: _SharedChannel) -> None:
        shared.users -= 1
        await shared.close_if_idle()

    def _retire(self, address: str, shared: _SharedChannel) -> None:
        # Only this very channel: another probe may already have dialed a fresh one for the address.
        if self._channels.get(address) is shared:
            del self._channels[address]
        shared.retired = True

    async def retain(self, addresses: set[str]) -> None:
        """Retire the channels of addresses no longer probed (closed now, or when their last probe ends)."""
        for address, shared in [(a, s) for a, s in self._channels.items() if a not in addresses]:
            self._retire(address, shared)
            await shared.close_if_idle()

    async def close(self) -> None:
        await self.retain(set())

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        """Never raises for a failed or cut-off call (that is an unhealthy result); only a cancellation of the
        calling task propagates."""
        shared = self._acquire(target.address)
        try:
            result = await self._probe(shared.channel, target)
            if not result.healthy:
                self._retire(target.address, shared)
            return result
        finally:
            await self._release(shared)

    async def _probe(self, channel: grpc.aio.Channel, target: ProbeTarget) -> ProbeResult:
        # Both calls at once, each with the probe timeout: one probe takes at most ~timeout_s.
        health, status = await asyncio.gather(self._health(channel), self._model_status(channel, target.model_name))
        return _judge(target, health, status)

    async def _health(self, channel: grpc.aio.Channel) -> HealthReply:
        stub = health_pb2_grpc.HealthStub(channel)
        return await _reply_or_code(stub.Check(health_pb2.HealthCheckRequest(), timeout=self._timeout_s))

    async def _model_status(self, channel: grpc.aio.Channel, model_name: str | None) -> StatusReply:
        if model_name is None:
            return None
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name
        stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
        reply: StatusReply = await _reply_or_code(stub.GetModelStatus(request, timeout=self._timeout_s))
        return reply

    async def __aenter__(self) -> GrpcReplicaProber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.close()
