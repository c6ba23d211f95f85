"""The shared gRPC server reports NOT_SERVING until its service says otherwise (grpcio's own default is SERVING)."""

from __future__ import annotations

import asyncio

import pytest

from monolith_serving.client.health import check_health
from monolith_serving.core.grpc_server import GrpcServerOptions, build_server

pytestmark = pytest.mark.integration


def test_health_is_not_serving_between_start_and_set_serving() -> None:
    async def scenario() -> list[bool]:
        server = build_server(GrpcServerOptions(port=0, host="127.0.0.1"), [])
        await server.start()
        seen = []
        try:
            address = f"127.0.0.1:{server.port}"
            for serving in (None, True, False):
                if serving is not None:
                    await server.set_serving(serving)
                result = await asyncio.to_thread(check_health, address, timeout_s=5.0)
                seen.append(result.serving)
        finally:
            await server.stop(0)
        return seen

    assert asyncio.run(scenario()) == [False, True, False]
