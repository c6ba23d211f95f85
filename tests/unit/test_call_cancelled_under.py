"""A gRPC call whose channel is closed under it (a replica retired while the call ran) raises CancelledError in the
awaiting task without anyone cancelling that task. Left alone it reaches the server's handler and the client gets
CANCELLED with no message (or, in a polling loop, ends the loop). The entry's replica attempts, its status polls and
the proxy's upstream call turn it into a failed attempt; a real cancellation of the task still propagates. Real
servers over loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from monolith_serving.core.serving_call import RpcStatusError
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.ps_client import (
    AttemptMetrics,
    ChannelPool,
    ReplicaHealth,
    ReplicasExhausted,
    RetryPolicy,
    call_with_retries,
)
from monolith_serving.entry.ps_status import PsStatusTracker
from monolith_serving.entry.replica_source import StaticReplicaSource
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2
from monolith_serving.proxy.upstream import UpstreamPool

METHOD = "/t.Test/Call"


@asynccontextmanager
async def server(delay_s: float, answer: bytes) -> AsyncIterator[str]:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(delay_s)
        return answer

    srv = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None, response_serializer=None)
    srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Test", {"Call": handler})])
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await srv.stop(0)


def attempt_metrics(metrics: EntryMetrics) -> AttemptMetrics:
    """The remote-dense call's attempt counters (any caller's would do): real Prometheus children."""
    return AttemptMetrics(
        retries=metrics.dense_retries, errors=metrics.dense_errors.labels, latency=metrics.dense_latency
    )


def cancelled_attempts(metrics: EntryMetrics) -> float | None:
    return metrics.registry.get_sample_value("entry_dense_errors_total", {"code": "CANCELLED"})


def closing_after(delay_s: float, channel: grpc.aio.Channel) -> asyncio.Task[None]:
    async def close() -> None:
        await asyncio.sleep(delay_s)
        await channel.close()

    return asyncio.create_task(close())


def attempts(channels: dict[str, grpc.aio.Channel]) -> Callable[[str, float], Any]:
    def send(address: str, timeout: float) -> Any:
        return channels[address].unary_unary(METHOD)(b"q", timeout=timeout)

    return send


async def slow_then_fast(
    channels: dict[str, grpc.aio.Channel], order: list[str], health: ReplicaHealth, metrics: EntryMetrics
) -> bytes:
    """One retried call over ``order`` (the slow replica first), each attempt given 3 s, one retry."""
    answer: bytes = await call_with_retries(
        order,
        attempts(channels),
        deadline=time.monotonic() + 10,
        policy=RetryPolicy(retry=1, min_attempt_s=3.0),
        health=health,
        metrics=attempt_metrics(metrics),
    )
    return answer


def test_a_replica_call_whose_channel_closes_under_it_moves_on_to_the_next_replica() -> None:
    async def scenario() -> None:
        async with server(5.0, b"slow") as slow, server(0.0, b"fast") as fast:
            channels = {a: grpc.aio.insecure_channel(a) for a in (slow, fast)}
            metrics = EntryMetrics()
            health = ReplicaHealth()
            closer = closing_after(0.2, channels[slow])
            answer = await asyncio.wait_for(slow_then_fast(channels, [slow, fast], health, metrics), timeout=5)
            await closer
            assert answer == b"fast"
            assert cancelled_attempts(metrics) == 1
            assert health.is_failing(slow)
            await channels[fast].close()

    asyncio.run(scenario())


def test_the_callers_own_cancellation_still_propagates() -> None:
    async def scenario() -> None:
        async with server(5.0, b"slow") as slow, server(0.0, b"fast") as fast:
            channels = {a: grpc.aio.insecure_channel(a) for a in (slow, fast)}
            metrics = EntryMetrics()
            task = asyncio.create_task(slow_then_fast(channels, [slow, fast], ReplicaHealth(), metrics))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert cancelled_attempts(metrics) is None  # no retry on the next replica
            for channel in channels.values():
                await channel.close()

    asyncio.run(scenario())


def test_the_proxys_upstream_call_reports_a_channel_closed_under_it_as_a_retryable_status() -> None:
    async def scenario() -> None:
        async with server(5.0, b"slow") as slow:
            pool = UpstreamPool()
            call = asyncio.create_task(pool.call(slow, METHOD, b"q", timeout_s=10, metadata=()))
            await asyncio.sleep(0.2)
            await pool.close_addresses([slow])
            with pytest.raises(RpcStatusError) as caught:
                await asyncio.wait_for(call, 5)
            assert caught.value.code is grpc.StatusCode.CANCELLED
            assert "channel was closed" in caught.value.message

            own = asyncio.create_task(pool.call(slow, METHOD, b"q", timeout_s=10, metadata=()))
            await asyncio.sleep(0.2)
            own.cancel()
            with pytest.raises(asyncio.CancelledError):
                await own
            await pool.close_addresses([slow])

    asyncio.run(scenario())


def test_replicas_exhausted_names_the_closed_channel() -> None:
    async def scenario() -> None:
        async with server(5.0, b"slow") as slow:
            channels = {slow: grpc.aio.insecure_channel(slow)}
            closer = closing_after(0.2, channels[slow])
            with pytest.raises(ReplicasExhausted, match="channel was closed"):
                await call_with_retries(
                    [slow],
                    attempts(channels),
                    deadline=time.monotonic() + 10,
                    policy=RetryPolicy(retry=0, min_attempt_s=3.0),
                    health=ReplicaHealth(),
                    metrics=attempt_metrics(EntryMetrics()),
                )
            await closer

    asyncio.run(scenario())


def test_a_status_poll_whose_channel_closes_under_it_counts_as_no_answer_not_the_end_of_the_loop() -> None:
    async def scenario() -> None:
        answer = get_model_status_pb2.GetModelStatusResponse()
        answer.model_version_status.add(version=1, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)

        async def slow_status(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.sleep(5)
            return answer.SerializeToString()

        srv = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(slow_status, request_deserializer=None, response_serializer=None)
        srv.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {"GetModelStatus": handler})]
        )
        address = f"127.0.0.1:{srv.add_insecure_port('127.0.0.1:0')}"
        await srv.start()
        try:
            channels = ChannelPool()
            tracker = PsStatusTracker(
                entry_model_name="entry", replicas=StaticReplicaSource([[address]]), channels=channels, timeout_s=10
            )
            closer = closing_after(0.2, channels.channel(address))
            poll = asyncio.create_task(tracker.poll())
            done, _ = await asyncio.wait([poll], timeout=5)
            await closer
            # The poll ends normally: the closed channel is one replica without an answer.
            assert done and not poll.cancelled() and poll.exception() is None
            assert tracker.shard_versions(0) == frozenset()
            assert not tracker.ready(1)
        finally:
            await srv.stop(0)

    asyncio.run(scenario())


def test_proxy_and_entry_channels_reconnect_within_two_seconds_of_a_replica_coming_back() -> None:
    """gRPC's default reconnect backoff grows to 120 s: a restarted entry kept failing 'connection refused' through
    the proxy for 8-12 s after it served again, and readmission probes on the same channel failed with it."""
    pool = UpstreamPool()
    options = dict(pool._options)
    assert options["grpc.initial_reconnect_backoff_ms"] <= 100
    assert options["grpc.max_reconnect_backoff_ms"] <= 2000
