"""Building and running the asyncio gRPC servers of every service.

Each service adds its servicers to the server this module builds; health, reflection and error mapping
are the same everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from monolith_serving.core.errors import InvalidArgumentError, UnavailableError
from monolith_serving.core.grpc_errors import ErrorMappingInterceptor

logger = logging.getLogger(__name__)

C = TypeVar("C")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class GrpcServerOptions:
    port: int
    host: str = "0.0.0.0"
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # Extra interceptors run after the error mapping one.
    interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=tuple)
    reflection_services: Sequence[str] = field(default_factory=tuple)


@dataclass
class GrpcServer:
    """A built server: call ``start()`` then ``wait()``; ``port`` is the bound port."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer

    async def start(self) -> None:
        # grpcio's health servicer reports the whole server ("") SERVING from construction; a client polling
        # health must not see SERVING before the service has loaded what it serves.
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool, service: str = "") -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(service, status)

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def build_server(options: GrpcServerOptions, add_servicers: Iterable[Callable[[grpc.aio.Server], None]]) -> GrpcServer:
    """Creates the server, registers servicers, health and reflection, and binds the port.

    Health starts NOT_SERVING; the service flips it once it can answer.
    """
    server = grpc.aio.server(
        interceptors=[ErrorMappingInterceptor(), *options.interceptors],
        options=[*channel_options(options.max_message_bytes), ("grpc.so_reuseport", 0)],
    )
    for add in add_servicers:
        add(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [*options.reflection_services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(f"{options.host}:{options.port}")
    if port == 0:
        raise UnavailableError(f"cannot bind gRPC port {options.host}:{options.port}")
    return GrpcServer(server=server, port=port, health=health)


def run_async_main(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Runs ``main(stop_event)`` on uvloop; SIGTERM/SIGINT set the event (installed once, here)."""
    import uvloop

    async def runner() -> int:
        # Everything that exists once the imports are done (modules, protobuf descriptors, numba's compiler state:
        # ~100k objects) lives as long as the process. A full collection scans it all, ~35 ms here, and every
        # request in flight waits that long; frozen, the collector never looks at it again.
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return uvloop.run(runner())


class Lifecycle(Protocol):
    """A server with idempotent ``start``/``stop``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def serve_until_signal(make_server: Callable[[], Lifecycle], name: str) -> int:
    """Runs a server from start to SIGTERM/SIGINT on uvloop; the process exit code.

    A server that fails to start is stopped again (releasing what it took) and the code is 1.
    """

    async def serve(stop: asyncio.Event) -> int:
        server = make_server()
        try:
            await server.start()
        except Exception:
            logger.exception("%s failed to start", name)
            await server.stop()
            return 1
        await stop.wait()
        logger.info("%s stopping", name)
        await server.stop()
        return 0

    return run_async_main(serve)


def serve_command(
    args: argparse.Namespace,
    config_from_args: Callable[[argparse.Namespace, dict[str, str]], C],
    make_server: Callable[[C], Lifecycle],
    name: str,
) -> int:
    """The ``run`` of a server command: parse the flags and environment once into the server's config (exit
    code 2 and one log line naming the problem when they are bad), then ``serve_until_signal``."""
    try:
        config = config_from_args(args, dict(os.environ))
    except InvalidArgumentError as error:
        logger.error("%s", error.message)
        return 2
    rest_api_port = getattr(args, "rest_api_port", 0)
    if rest_api_port:
        logger.warning("--rest_api_port %d ignored: the %s serves gRPC only", rest_api_port, name)
    return serve_until_signal(lambda: make_server(config), name)
