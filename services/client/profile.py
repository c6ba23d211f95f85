"""Load generation: N concurrent workers send Predict for a fixed duration and record latencies.

Workers share one channel per target (gRPC multiplexes them over one HTTP/2 connection) and cycle through a
pool of prepared requests, so request building never shows up in the latency; with several targets the
requests take turns among them (Monolith's tfs_client picks one at random per request). ``ProfileResult``
reports count, errors, mean/p50/p99 latency and QPS. The percentiles are nearest-rank, as tfs_client computes
its p99: the latency at index ``round((n - 1) * q)`` of the sorted latencies, a latency that was observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import numpy as np

from monolith_serving.core.aio_wait import within
from monolith_serving.core.errors import UnavailableError
from monolith_serving.core.grpc_server import channel_options
from monolith_serving.core.tls_channel import ChannelTls, aio_channel
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


@dataclass(frozen=True)
class ProfileResult:
    workers: int
    duration_s: float
    count: int
    errors: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    qps: float
    first_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    latencies_s: Sequence[float], errors: int, workers: int, elapsed_s: float, first_error: str
) -> ProfileResult:
    lat_ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    has = len(lat_ms) > 0
    return ProfileResult(
        workers=workers,
        duration_s=round(elapsed_s, 3),
        count=len(lat_ms),
        errors=errors,
        mean_ms=round(float(lat_ms.mean()), 3) if has else 0.0,
        p50_ms=round(float(np.percentile(lat_ms, 50, method="nearest")), 3) if has else 0.0,
        p99_ms=round(float(np.percentile(lat_ms, 99, method="nearest")), 3) if has else 0.0,
        qps=round(len(lat_ms) / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        first_error=first_error,
    )


async def wait_connected(channel: grpc.aio.Channel, target: str, timeout_s: float) -> None:
    """Returns once ``channel`` is READY; UnavailableError naming ``target`` after ``timeout_s``.

    ``channel_ready()`` alone never gives up: against a port nothing listens on it retries forever."""
    try:
        await within(channel.channel_ready(), timeout_s)
    except TimeoutError:
        state = channel.get_state().name
        raise UnavailableError(f"cannot reach {target} within {timeout_s:g} s (channel {state})") from None


async def run_profile(
    *,
    targets: Sequence[str],
    requests: Sequence[predict_pb2.PredictRequest],
    tls: ChannelTls | None = None,
    workers: int,
    duration_s: float,
    timeout_s: float = 5.0,
    warmup_s: float = 0.0,
    progress: Callable[[float, int, int], None] | None = None,
) -> ProfileResult:
    """Runs the load; ``progress(elapsed_s, count, errors)`` is called about once a second. ``tls``: dial the targets
    over TLS (None: plaintext).

    The load goes to each of ``targets`` in turn. Waits up to ``timeout_s`` for a connection to every target first
    and raises UnavailableError naming one that cannot be reached by then. Raises ValueError for no target, no
    requests or no workers."""
    if not targets:
        raise ValueError("need at least one target")
    addresses = tuple(targets)
    if not requests or workers < 1:
        raise ValueError(f"need at least one request and one worker, got {len(requests)} and {workers}")
    payloads = [r.SerializeToString() for r in requests]
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(aio_channel(address, tls, channel_options())) for address in addresses
        ]
        # Send pre-serialized bytes so the client's own protobuf work stays out of the measurement.
        calls = [
            channel.unary_unary(PREDICT_METHOD, request_serializer=None, response_deserializer=None)
            for channel in channels
        ]
        for channel, address in zip(channels, addresses, strict=True):
            await wait_connected(channel, address, timeout_s)
        latencies: list[float] = []
        errors = 0
        first_error = ""
        recording = False
        stop_at = 0.0

        async def worker(index: int) -> None:
            nonlocal errors, first_error
            k = index
            while True:
                now = time.perf_counter()
                if recording and now >= stop_at:
                    return
                payload = payloads[k % len(payloads)]
                call = calls[k % len(calls)]
                k += 1
                try:
                    await call(payload, timeout=timeout_s)
                except grpc.aio.AioRpcError as error:
                    if recording:
                        errors += 1
                        if not first_error:
                            first_error = f"{error.code().name}: {error.details()}"
                    continue
                if recording:
                    latencies.append(time.perf_counter() - now)

        tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
        try:
            if warmup_s > 0:
                await asyncio.sleep(warmup_s)
            recording = True
            started = time.perf_counter()
            stop_at = started + duration_s
            while True:
                elapsed = time.perf_counter() - started
                if elapsed >= duration_s:
                    break
                await asyncio.sleep(min(1.0, duration_s - elapsed))
                if progress is not None:
                    progress(time.perf_counter() - started, len(latencies), errors)
            await asyncio.gather(*tasks)
        finally:
            # Ctrl-C cancels this coroutine mid-load: the workers must end before the channel closes, or one
            # calls on the closed channel and dies with a "Task exception was never retrieved" traceback.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - started
    return summarize(latencies, errors, workers, elapsed, first_error)
