"""A minimal serving replica for the replica-manager tests: gRPC health (SERVING) and GetModelStatus.

GetModelStatus reports ``--version`` as AVAILABLE for every model in ``--models``; other names get NOT_FOUND.

Run: python replica_manager_fake_replica.py --port P [--models ps_0] [--version 1]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc


class FakeModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, models: set[str], version: int) -> None:
        self.models = models
        self.version = version

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if request.model_spec.name not in self.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_spec.name} not served")
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=self.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return response


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default="ps_0")
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args()
    server = grpc.aio.server()
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(  # type: ignore[no-untyped-call]
        FakeModelService(set(args.models.split(",")), args.version), server
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main())
