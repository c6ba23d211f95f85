"""Channels to entry replicas: one grpc.aio channel per address, reused, carrying raw bytes; TLS when the proxy
is given ``--entry_ssl_*`` flags (calls and readmission probes share the channel, so both use it).

Requests and responses are never decoded here: the multicallables have no serializers, so the bytes the
client sent go out unchanged and the entry's response bytes come back unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_serving.core.cancellation import cancelled_by_caller
from monolith_serving.core.grpc_server import FAST_RECONNECT_OPTIONS, channel_options
from monolith_serving.core.serving_call import Metadata, RpcStatusError, UpstreamReply, relayable
from monolith_serving.core.tls_channel import ChannelTls, aio_channel

log = logging.getLogger(__name__)

# HTTP/2 keepalive while calls are in flight: a replica whose host vanished or whose process is stopped (no RST,
# no FIN) is found dead within about KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS; its calls then fail UNAVAILABLE
# (retried on another replica) instead of running to their deadline, and its channel reconnects. grpcio (1.85,
# measured) waits for the ping's ack up to ``grpc.http2.ping_timeout_ms`` (default 60 s) whatever the keepalive
# timeout, so both are set. No pings on idle connections: a gRPC server by default answers a client pinging without
# calls more often than every 2 h with GOAWAY ``too_many_pings``. With calls in flight, grpcio sends at most
# two pings without data in between, then one a minute; a server counts a ping closer than 5 min
# (``grpc.http2.min_ping_interval_without_data_ms``) to the previous one, with no data sent meanwhile, as a
# strike, and at the third sends GOAWAY, failing the calls on that connection UNAVAILABLE (measured: a call quiet
# for 182 s). Entry servers should allow pings every KEEPALIVE_TIME_MS.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000


class UpstreamPool:
    """Lazily created channels keyed by address. Not thread-safe; one asyncio loop owns it."""

    def __init__(
        self,
        *,
        max_message_bytes: int | None = None,
        keepalive_time_ms: int = KEEPALIVE_TIME_MS,
        keepalive_timeout_ms: int = KEEPALIVE_TIMEOUT_MS,
        tls: ChannelTls | None = None,
    ) -> None:
        self._tls = tls
        self._options = channel_options() if max_message_bytes is None else channel_options(max_message_bytes)
        self._options.extend(
            [
                ("grpc.keepalive_time_ms", keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
                ("grpc.http2.ping_timeout_ms", keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", 0),
            ]
        )
        # We retry on another replica ourselves; gRPC's transparent retries would hide failures from the
        # outlier detection and could double the attempts.
        self._options.append(("grpc.enable_retries", 0))
        # A restarted entry is back in 0.1-2 s, not after gRPC's default backoff of up to 120 s (readmission
        # probes share the channel and kept failing while it backed off).
        self._options.extend(FAST_RECONNECT_OPTIONS)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = aio_channel(address, self._tls, self._options)
        return channel

    def _callable(self, address: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        key = (address, method)
        found = self._callables.get(key)
        if found is None:
            # Registered: gRPC core interns the method path once per channel instead of once per call.
            found = self._callables[key] = self._channel(address).unary_unary(method, _registered_method=True)
        return found

    async def call(
        self, address: str, method: str, request: bytes, *, timeout_s: float | None, metadata: Metadata
    ) -> UpstreamReply:
        """One attempt. Raises RpcStatusError carrying the upstream status (or UNAVAILABLE on a broken
        connection) and its trailing metadata."""
        # An aio.Metadata is used as is; a plain tuple would go through an ABC isinstance check and a copy.
        call = self._callable(address, method)(request, timeout=timeout_s, metadata=grpc.aio.Metadata(*metadata))
        try:
            response = await call
            trailing = await call.trailing_metadata()
        except grpc.aio.AioRpcError as error:
            raise RpcStatusError.of_call(error) from None
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            # The channel was closed under the call (not our client's cancel): a failed attempt the core may
            # retry on another replica, never a bare CANCELLED for the client.
            raise RpcStatusError(
                grpc.StatusCode.CANCELLED, f"the call to {address} was cancelled: its channel was closed"
            ) from None
        return UpstreamReply(response=response, trailing=relayable(trailing))

    async def probe(self, address: str, timeout_s: float) -> bool:
        """True when the replica's gRPC health service answers SERVING within ``timeout_s``."""
        stub = health_pb2_grpc.HealthStub(self._channel(address))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            log.info("probe of %s failed: %s %s", address, error.code().name, error.details())
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close_addresses(self, addresses: Sequence[str]) -> None:
        """Closes the channels of ``addresses`` (replicas that left discovery and have nothing in flight)."""
        for address in addresses:
            if address in self._channels:
                await self._close(address)

    async def _close(self, address: str) -> None:
        channel = self._channels.pop(address)
        for key in [k for k in self._callables if k[0] == address]:
            del self._callables[key]
        with contextlib.suppress(Exception):
            await channel.close()

    async def close(self) -> None:
        await asyncio.gather(*(self._close(a) for a in list(self._channels)))
