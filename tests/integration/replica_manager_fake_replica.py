"""A minimal serving replica for the replica-manager tests: gRPC health (SERVING) and GetModelStatus.

GetModelStatus reports ``--version`` as AVAILABLE for every model in ``--models``, as LOADING for the ones in
``--loading``; other names get NOT_FOUND. In-process tests build ``FakeModelService`` themselves (e.g. one
slow model) and start it with ``serve``.

Run: python replica_manager_fake_replica.py --port P [--models ps_0] [--loading ps_2] [--version 1]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

ModelVersionStatus = get_model_status_pb2.ModelVersionStatus


class FakeModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    """``delay_s`` holds back the answer for some models (a slow replica, still within the probe timeout)."""

    def __init__(
        self,
        models: set[str],
        version: int,
        *,
        loading: frozenset[str] = frozenset(),
        delay_s: Mapping[str, float] | None = None,
    ) -> None:
        self.models = models
        self.version = version
        self.loading = loading
        self.delay_s = dict(delay_s or {})

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        name = request.model_spec.name
        if name not in self.models | self.loading:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {name} not served")
        await asyncio.sleep(self.delay_s.get(name, 0.0))
        state = ModelVersionStatus.LOADING if name in self.loading else ModelVersionStatus.AVAILABLE
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=self.version, state=state)
        return response


async def serve(
    port: int, model_service: FakeModelService, health: health_pb2_grpc.HealthServicer | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start a replica on 127.0.0.1:``port`` (0: any free port); returns it and its bound port. Without
    ``health``, the standard health service answers SERVING."""
    if health is None:
        health = HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.aio.server()
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_service, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound_port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound_port


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default="ps_0")
    parser.add_argument("--loading", default="", help="models reported LOADING (comma-separated)")
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args()
    loading = frozenset(name for name in args.loading.split(",") if name)
    server, _ = await serve(args.port, FakeModelService(set(args.models.split(",")), args.version, loading=loading))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main())
