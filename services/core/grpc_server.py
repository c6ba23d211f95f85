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
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError, UnavailableError
from monolith_serving.core.grpc_errors import ErrorMappingInterceptor
from monolith_serving.core.grpc_socket_path import BoundSocket, bound_socket, claim_socket_path, remove_bound_socket
from monolith_serving.core.metrics import GrpcServerMetrics
from monolith_serving.core.tls_config import ServerTls

logger = logging.getLogger(__name__)

C = TypeVar("C")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024

ChannelArguments = tuple[tuple[str, int | str], ...]


@dataclass(frozen=True)
class GrpcServerOptions:
    port: int
    host: str = "0.0.0.0"
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # Extra interceptors run after the error mapping one.
    interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=tuple)
    reflection_services: Sequence[str] = field(default_factory=tuple)
    # tensorflow_model_server's --grpc_channel_arguments: gRPC core server arguments, over our own defaults.
    channel_arguments: ChannelArguments = ()
    # --ssl_config_file: the port serves TLS only (None: plaintext only).
    tls: ServerTls | None = None
    # --grpc_socket_path: also listen on this UNIX domain socket, with the port's credentials (None: the port only).
    socket_path: Path | None = None


@dataclass
class GrpcServer:
    """A built server: call ``start()`` then ``wait()``; ``port`` is the bound port, ``unix_socket`` the socket file
    bound besides it (removed by ``stop``)."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    unix_socket: BoundSocket | None = None

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
        if self.unix_socket is not None:
            remove_bound_socket(self.unix_socket)


# For channels to replicas that restart (a PS, an entry): reconnect within 0.1-2 s of the replica being back.
# gRPC's default backoff grows to 120 s, so calls kept failing "connection refused" long after it served again.
FAST_RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000))


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def build_server(
    options: GrpcServerOptions,
    add_servicers: Iterable[Callable[[grpc.aio.Server], None]],
    *,
    registry: CollectorRegistry | None = None,
) -> GrpcServer:
    """Creates the server, registers servicers, health and reflection, and binds the port (TLS when
    ``options.tls``, logged in one line), and ``options.socket_path`` with the same credentials when given (a
    socket file left by a dead server is removed first; ``core.grpc_socket_path``).

    Health starts NOT_SERVING; the service flips it once it can answer. ``registry``: where the server's own
    metrics (``core.metrics``) go; the service's /metrics registry.
    """
    metrics = None if registry is None else GrpcServerMetrics(registry)
    arguments: dict[str, int | str] = {
        **dict(channel_options(options.max_message_bytes)),
        "grpc.so_reuseport": 0,
        # The proxy pings an entry every 10 s while a call waits (proxy/upstream.py keepalive). By default a
        # server takes pings more often than every 5 min with no data for abuse, and at the third strike
        # sends GOAWAY too_many_pings, failing the calls in flight on that connection.
        "grpc.http2.min_ping_interval_without_data_ms": 5000,
    }
    arguments.update(options.channel_arguments)  # the operator's win
    server = grpc.aio.server(
        interceptors=[ErrorMappingInterceptor(metrics), *options.interceptors],
        options=list(arguments.items()),
    )
    for add in add_servicers:
        add(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [*options.reflection_services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    address = f"{options.host}:{options.port}"
    port = _bind(server, address, options.tls)
    if port == 0:
        raise UnavailableError(f"cannot bind gRPC port {address}")
    if options.tls is not None:
        logger.info("gRPC port %s:%d serves %s", options.host, port, options.tls.describe())
    unix_socket = None
    if options.socket_path is not None:
        unix_socket = _bind_unix_socket(server, options.socket_path, options.tls)
    return GrpcServer(server=server, port=port, health=health, unix_socket=unix_socket)


def _bind(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Binds ``address``; its port, 0 when it cannot (grpcio also raises RuntimeError for some addresses)."""
    if tls is None:
        return int(server.add_insecure_port(address))
    return int(server.add_secure_port(address, tls.server_credentials()))


def _bind_unix_socket(server: grpc.aio.Server, path: Path, tls: ServerTls | None) -> BoundSocket:
    # Checked again here although the command line's parsing checked it: a server may have taken or left the
    # path since, and gRPC's bind would silently take a live server's socket file.
    claim_socket_path(path)
    address = f"unix:{path}"
    try:
        bound = _bind(server, address, tls)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise UnavailableError(f"cannot listen on {address} (--grpc_socket_path)")
    logger.info("gRPC also listens on %s%s", address, "" if tls is None else f", serving {tls.describe()}")
    return bound_socket(path)


def run_async_main(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Runs ``main(stop_event)`` on uvloop; SIGTERM/SIGINT set the event (installed once, here).

    A second signal while stopping ends the process at once with 128 + its number: a stop can take a drain timeout
    or a load that will not end, and an operator pressing Ctrl-C again means "now".
    """
    import uvloop

    async def runner() -> int:
        # Everything that exists once the imports are done (modules, protobuf descriptors, numba's compiler state:
        # ~100k objects) lives as long as the process. A full collection scans it all, ~35 ms here, and every
        # request in flight waits that long; frozen, the collector never looks at it again.
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                logger.warning("%s again while stopping: exiting now", sig.name)
                _exit_now(128 + sig.value)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main(stop)

    return uvloop.run(runner())


class Lifecycle(Protocol):
    """A server with idempotent ``start``/``stop``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def serve_until_signal(make_server: Callable[[], Lifecycle], name: str) -> int:
    """Runs a server from start to SIGTERM/SIGINT on uvloop; the process exit code.

    A server that fails to start is stopped again (releasing what it took) and the code is 1. A signal during
    ``start()`` (which waits for the first model load) cancels the start and stops the server; the code is 0.
    When a thread (a load stuck in a stalled file system) outlives the stop, the process exits with the code
    without returning (see ``_exit_unless_gone_within``).
    """

    async def serve(stop: asyncio.Event) -> int:
        server = make_server()
        try:
            started = await _start_unless_stopped(server, stop)
        except Exception:
            logger.exception("%s failed to start", name)
            await server.stop()
            _exit_unless_gone_within(_THREAD_EXIT_WAIT_S, 1)
            return 1
        if started:
            await stop.wait()
        logger.info("%s stopping%s", name, "" if started else " before it finished starting")
        await server.stop()
        _exit_unless_gone_within(_THREAD_EXIT_WAIT_S, 0)
        return 0

    return run_async_main(serve)


# How long a cancelled ``start()`` may take to unwind before the server is stopped anyway.
_START_CANCEL_WAIT_S = 2.0
# How long the process may take to end once its server has stopped, before it exits without waiting for stuck threads.
_THREAD_EXIT_WAIT_S = 2.0


async def _start_unless_stopped(server: Lifecycle, stop: asyncio.Event) -> bool:
    """Runs ``server.start()`` until it ends or ``stop`` is set, whichever comes first.

    True once started; False when ``stop`` came first, after the start has been cancelled. Raises what
    ``start()`` raised.
    """
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            return True
    finally:
        stopping.cancel()
        if not starting.done():
            starting.cancel()
    # A start that ignores its cancellation must not hold up the stop that follows.
    await asyncio.wait({starting}, timeout=_START_CANCEL_WAIT_S)
    if not starting.done():
        logger.warning("start did not end within %g s of its cancellation; stopping anyway", _START_CANCEL_WAIT_S)
    elif not starting.cancelled() and starting.exception() is not None:
        logger.warning("start failed while being cancelled", exc_info=starting.exception())
    return False


def _exit_unless_gone_within(wait_s: float, code: int) -> None:
    """Arms a daemon thread that ends the process with ``code`` if it still runs ``wait_s`` from now.

    Call once the server has stopped. What is left then (the loop's own shutdown, the interpreter's exit) takes
    milliseconds, unless a thread cannot finish: a load blocked in a stalled file system (or a FIFO) on an
    executor thread. asyncio's shutdown of the default executor and the interpreter's exit both join such a thread
    without a timeout, so the process would hang until the orchestrator's SIGKILL. ``os._exit`` skips those joins
    (and the ``atexit`` hooks, so logging is flushed here). A daemon thread never holds up a normal exit.
    """

    def exit_if_still_running() -> None:
        time.sleep(wait_s)
        names = ", ".join(thread.name for thread in _running_non_daemon_threads())
        logger.warning("still running %g s after stopping (threads: %s): exiting without waiting more", wait_s, names)
        _exit_now(code)

    threading.Thread(target=exit_if_still_running, name="exit-watchdog", daemon=True).start()


def _exit_now(code: int) -> None:
    """Ends the process with ``code`` without joining threads or running ``atexit`` hooks; logs flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _running_non_daemon_threads() -> list[threading.Thread]:
    current = threading.current_thread()
    return [t for t in threading.enumerate() if t is not current and not t.daemon and t.is_alive()]


def serve_command(
    args: argparse.Namespace,
    config_from_args: Callable[[argparse.Namespace, dict[str, str]], C],
    make_server: Callable[[C], Lifecycle],
    name: str,
) -> int:
    """The ``run`` of a server command: parse the flags and environment once into the server's config (exit
    code 2 and one log line naming the problem when they are bad or name a missing file), then
    ``serve_until_signal``."""
    try:
        config = config_from_args(args, dict(os.environ))
    except (InvalidArgumentError, NotFoundError) as error:
        logger.error("%s", error.message)
        return 2
    return serve_until_signal(lambda: make_server(config), name)
