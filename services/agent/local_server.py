"""The agent's client of its own model-server children: version states and config reloads.

One channel per child address, reused for every poll. ``model_states`` is the ``StatusSource`` the
ReplicaUpdater polls; it raises when the child does not answer (the updater then writes UNKNOWN).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_serving.core.errors import FailedPreconditionError
from monolith_serving.core.grpc_server import channel_options
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

__all__ = ["LocalServerClient", "grpc_health_probe"]


async def grpc_health_probe(port: int) -> bool:
    """True when a gRPC server on ``127.0.0.1:port`` answers a health check (SERVING or not).

    Stricter than a TCP connect: a foreign listener on a taken port does not count as our child.
    """
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
    return True


class LocalServerClient:
    """ModelService of one local child. ``close()`` is idempotent."""

    def __init__(self, address: str, *, timeout_s: float = 2.0, reload_timeout_s: float = 600.0) -> None:
        self.address = address
        self._timeout_s = timeout_s
        self._reload_timeout_s = reload_timeout_s
        self._channel = grpc.aio.insecure_channel(address, options=channel_options())
        self._stub = model_service_pb2_grpc.ModelServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def model_states(self, model_name: str) -> list[int]:
        """ModelVersionStatus.State of every version of ``model_name``, oldest version first."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name
        response = await self._stub.GetModelStatus(request, timeout=self._timeout_s)
        versions = sorted(response.model_version_status, key=lambda s: s.version)
        return [int(s.state) for s in versions]

    async def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """HandleReloadConfigRequest; returns once the child has applied the config (TF Serving semantics)."""
        request = model_management_pb2.ReloadConfigRequest(config=config)
        response = await self._stub.HandleReloadConfigRequest(request, timeout=self._reload_timeout_s)
        if response.status.error_code != 0:
            raise FailedPreconditionError(f"{self.address}: reload failed: {response.status.error_message}")

    async def close(self) -> None:
        await self._channel.close()
