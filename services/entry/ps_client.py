"""Fetching embeddings from the PS shards (REFERENCE §5): one concurrent ``lookup`` per shard.

Guarantees of ``PsFanout.lookup``:
- every table's unique fids are split by shard (``fid mod num_ps``, floor modulo) and each shard gets
  exactly one Predict holding all of its tables;
- each call's deadline is the rest of the caller's deadline; on UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED
  or NOT_FOUND (that replica lacks the pinned version) the next replica is tried, at most ``retry`` times;
- replicas known to hold the pinned version and not failing recently are tried first;
- it never waits past the deadline: when a shard has no replica left it raises ``UnavailableError``
  naming the shard and the last error;
- with ``FanoutConfig.coalesce`` on (the default), concurrent lookups to the same shard and version share
  one call while another is in flight (``ps_coalesce``); each still gets its own rows, its own deadline and
  every error, and the guarantees above hold for the merged call.
Channels are opened once per replica address and reused by every request (``ChannelPool``); the channel of a
replica that left discovery is closed only after its calls in flight had time to finish.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from monolith_serving.core.agent_conf import DEFAULT_FETCH_PS_RETRY, DEFAULT_FETCH_PS_TIMEOUT_MS
from monolith_serving.core.cancellation import cancelled_by_caller
from monolith_serving.core.errors import DeadlineExceededError, MonolithServingError, UnavailableError
from monolith_serving.core.grpc_server import FAST_RECONNECT_OPTIONS, channel_options
from monolith_serving.core.sharding import shard_of
from monolith_serving.core.tensor_codec import TensorCodecError, from_tensor_proto
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.ps_coalesce import CoalesceConfig, ShardAnswer, ShardCoalescer, TableFids
from monolith_serving.entry.ps_wire import input_key, lookup_request, model_spec_field
from monolith_serving.entry.replica_source import ReplicaSource
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2

logger = logging.getLogger(__name__)

T = TypeVar("T")
Int64Array = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]

LOOKUP_SIGNATURE = "lookup"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
# CANCELLED from a replica call is never our own cancellation (that raises CancelledError in the caller): it
# is a replica shutting down with calls in flight, or a channel torn down under them; a lookup is idempotent.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.CANCELLED,
    }
)
# A channel whose replica left discovery still carries calls that may end well (or time out by their own
# deadline); closing it at once would cancel them. It is closed after this long instead.
_RETIRE_GRACE_S = 30.0
_CACHED_VERSIONS = 8  # encoded model_specs kept per shard before the cache starts over


def ps_model_name(entry_model_name: str, shard: int) -> str:
    """``ps_<i>``, or ``<model>:ps_<i>`` when the entry is named ``<model>:entry`` (agent v3)."""
    model, sep, _ = entry_model_name.rpartition(":")
    return f"{model}:ps_{shard}" if sep else f"ps_{shard}"


def split_deadline(remaining: float, *, attempt: int, retry: int, replicas: int, min_attempt_s: float) -> float:
    """The timeout of attempt ``attempt`` (0-based): what is left of the deadline split over the attempts
    still allowed, never below ``min_attempt_s`` (so a merely slow replica is not retried early).

    A replica whose host vanished (no RST) answers nothing; with the whole deadline per attempt it would
    hold the request until the client gives up. The last attempt, or the only replica, gets all of it.
    """
    attempts_left = retry + 1 - attempt
    if attempts_left <= 1 or replicas <= 1:
        return remaining
    return min(remaining, max(remaining / attempts_left, min_attempt_s))


async def gather_first_inline(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of ``calls`` run concurrently, in order: ``asyncio.gather`` minus one task (the first
    call runs in the caller's task; a task costs the event loop more than a small lookup does).

    On an error the other calls are cancelled (the request fails anyway) and the error raised.
    """
    if not calls:
        return []
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(call) for call in calls[1:]]
    try:
        first = await calls[0]
        rest = [await task for task in tasks]
    except BaseException:
        for task in tasks:
            task.cancel()
            task.add_done_callback(_retrieve)
        raise
    return [first, *rest]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Marks a cancelled sibling's own error as seen (asyncio would log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class LookupResult:
    values: dict[str, Float32Array]  # table -> [len(unique fids), dim]
    ps_versions: dict[int, int]  # shard -> version the PS reported


class EmbeddingLookup(abc.ABC):
    """Turns unique fids per table into embedding rows (zeros for fids a table does not hold)."""

    @abc.abstractmethod
    async def lookup(
        self,
        version: int,
        fids: Mapping[str, Int64Array],
        dims: Mapping[str, int],
        timeout_s: float,
        urgent_s: float | None = None,
    ) -> LookupResult:
        """``timeout_s``: how long the lookup may take. ``urgent_s`` (shorter, or None): when the most urgent of
        the requests it serves stops waiting; a merged pass serves several, and retries are sized for that one
        while it still waits (see ``call_with_retries``)."""


# grpc ships no type stubs; a unary-unary callable: (request, timeout=...) -> awaitable response.
PredictCall = Any


class ChannelPool:
    """One channel (and Predict callable) per address, opened on first use and kept. Loop-affine."""

    def __init__(self, retire_grace_s: float = _RETIRE_GRACE_S) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._predict: dict[str, PredictCall] = {}
        self._lookup: dict[str, PredictCall] = {}
        self._retire_grace_s = retire_grace_s
        self._retiring: dict[grpc.aio.Channel, asyncio.Task[None]] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=[*channel_options(), *FAST_RECONNECT_OPTIONS])
            self._channels[address] = channel
        return channel

    def predict(self, address: str) -> PredictCall:
        call = self._predict.get(address)
        if call is None:
            call = self.channel(address).unary_unary(
                PREDICT_METHOD,
                request_serializer=predict_pb2.PredictRequest.SerializeToString,
                response_deserializer=predict_pb2.PredictResponse.FromString,
            )
            self._predict[address] = call
        return call

    def lookup(self, address: str) -> PredictCall:
        """Predict taking an already serialized PredictRequest (``ps_wire``) and returning the response."""
        call = self._lookup.get(address)
        if call is None:
            call = self.channel(address).unary_unary(
                PREDICT_METHOD, request_serializer=None, response_deserializer=predict_pb2.PredictResponse.FromString
            )
            self._lookup[address] = call
        return call

    async def retain(self, addresses: set[str]) -> None:
        """Retires channels of addresses no longer in use: no new call gets them, and each is closed once its
        calls in flight had ``retire_grace_s`` to finish (in the background; this returns at once)."""
        for address in [a for a in self._channels if a not in addresses]:
            self._predict.pop(address, None)
            self._lookup.pop(address, None)
            channel = self._channels.pop(address)
            self._retiring[channel] = asyncio.create_task(self._retire(channel))

    async def _retire(self, channel: grpc.aio.Channel) -> None:
        try:
            await channel.close(self._retire_grace_s)
        finally:
            self._retiring.pop(channel, None)

    async def close(self) -> None:
        """Closes every channel now, retiring ones included (calls still in flight are cancelled)."""
        channels = [*self._channels.values(), *self._retiring]
        for task in self._retiring.values():
            task.cancel()
        self._channels.clear()
        self._predict.clear()
        self._lookup.clear()
        self._retiring.clear()
        await asyncio.gather(*(channel.close() for channel in channels))


@dataclass
class ReplicaHealth:
    """Recent failures per address; failing replicas are tried last for ``cooldown_s``."""

    cooldown_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _failed_at: dict[str, float] = field(default_factory=dict)

    def failed(self, address: str) -> None:
        now = self.clock()
        # Replicas that failed and then left discovery never succeed again: drop what has cooled down, so that
        # months of replica churn (a new address per restarted pod) leave nothing behind.
        for old in [a for a, at in self._failed_at.items() if now - at >= self.cooldown_s]:
            del self._failed_at[old]
        self._failed_at[address] = now

    def succeeded(self, address: str) -> None:
        self._failed_at.pop(address, None)

    def is_failing(self, address: str) -> bool:
        at = self._failed_at.get(address)
        return at is not None and self.clock() - at < self.cooldown_s

    def remembered(self) -> int:
        """How many addresses are remembered (failing now, or cooled down and not yet dropped); not ``__len__``,
        which would make an empty one false."""
        return len(self._failed_at)


VersionKnowledge = Callable[[str, int], bool | None]
"""``(address, version) -> True/False`` when the status poll knows whether it is AVAILABLE, else None."""


class ReplicaOrder:
    """The order in which to try a shard's replicas for one call.

    Rotated per call so load spreads, then stably sorted: replicas known to lack the version go last, and
    recently failing ones after the healthy ones.
    """

    def __init__(self, health: ReplicaHealth, knows_version: VersionKnowledge | None = None) -> None:
        self._health = health
        self._knows_version = knows_version
        self._round_robin = 0

    def order(self, replicas: Sequence[str], version: int) -> list[str]:
        addresses = list(replicas)
        if len(addresses) <= 1:
            return addresses
        self._round_robin += 1
        k = self._round_robin % len(addresses)
        addresses = addresses[k:] + addresses[:k]

        def rank(address: str) -> int:
            known = self._knows_version(address, version) if self._knows_version is not None else None
            return (2 if known is False else 0) + (1 if self._health.is_failing(address) else 0)

        return sorted(addresses, key=rank)


@dataclass(frozen=True)
class AttemptMetrics:
    """Where one caller's attempts are counted; label children resolved once, not per call."""

    retries: Any  # .inc() per retry on another replica
    errors: Callable[[str], Any]  # gRPC code name -> counter child
    latency: Any  # .observe(seconds) per successful call


class ReplicasExhausted(Exception):
    """Every allowed attempt failed (or the deadline passed); ``last_error`` tells the last thing that happened.

    ``as_error`` is what the caller answers: DEADLINE_EXCEEDED once the request's deadline has passed (the
    caller's time ran out, which a proxy must not hold against this server), else UNAVAILABLE (the replicas
    refused or failed while there was time left)."""

    def __init__(self, last_error: str, *, deadline_passed: bool) -> None:
        super().__init__(last_error)
        self.last_error = last_error
        self.deadline_passed = deadline_passed

    def as_error(self, message: str) -> MonolithServingError:
        return DeadlineExceededError(message) if self.deadline_passed else UnavailableError(message)


@dataclass(frozen=True)
class RetryPolicy:
    """How a call to one sub-model's replicas retries (``--fetch_ps_retry``, ``--fetch_ps_timeout_ms``)."""

    retry: int = DEFAULT_FETCH_PS_RETRY  # attempts after the first, each on the next replica
    # An attempt is never cut below this (fetch_ps_timeout_ms), so a merely slow replica is not retried early.
    min_attempt_s: float = DEFAULT_FETCH_PS_TIMEOUT_MS / 1000


async def call_with_retries(
    addresses: Sequence[str],
    send: Callable[[str, float], Awaitable[T]],
    *,
    deadline: float,
    policy: RetryPolicy,
    health: ReplicaHealth,
    metrics: AttemptMetrics,
    urgent: float | None = None,
) -> T:
    """``send(address, timeout)`` on ``addresses`` in order (wrapping around), at most ``policy.retry + 1``
    attempts, each with its share of the deadline (``split_deadline``); RETRYABLE codes move on to the next
    replica, anything else stops. Shared by the PS fan-out and the remote dense call. Raises ReplicasExhausted.

    ``urgent`` (before ``deadline``): while it has not passed, the attempts but the last are shares of the time
    to it instead. A merged pass serves requests with different deadlines; sized for the latest, a first attempt
    on a hung replica would outlast the others, which a retry on another replica could still have answered."""
    retry, min_attempt_s = policy.retry, policy.min_attempt_s
    last_error = "no attempt"
    for attempt in range(retry + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last_error = f"deadline passed after {attempt} attempt(s); last: {last_error}"
            break
        address = addresses[attempt % len(addresses)]
        if attempt:
            metrics.retries.inc()
        budget = remaining
        if urgent is not None and attempt < retry and len(addresses) > 1:
            urgent_left = urgent - time.monotonic()
            if 0 < urgent_left < remaining:
                budget = urgent_left
        timeout = split_deadline(
            budget, attempt=attempt, retry=retry, replicas=len(addresses), min_attempt_s=min_attempt_s
        )
        started = time.monotonic()
        try:
            response = await send(address, timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            metrics.errors(code.name).inc()
            last_error = f"{address}: {code.name} {error.details()}"
            if code not in RETRYABLE:
                break
            health.failed(address)
            continue
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            # The call was cancelled under us, not by our caller: its channel was closed (a replica retired,
            # the pool shutting down). Like a broken connection: another replica may answer.
            metrics.errors(grpc.StatusCode.CANCELLED.name).inc()
            last_error = f"{address}: CANCELLED (the call's channel was closed under it)"
            health.failed(address)
            continue
        metrics.latency.observe(time.monotonic() - started)
        health.succeeded(address)
        return response
    raise ReplicasExhausted(last_error, deadline_passed=time.monotonic() >= deadline)


@dataclass(frozen=True)
class FanoutConfig:
    entry_model_name: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    coalesce: CoalesceConfig = field(default_factory=CoalesceConfig)


class PsFanout(EmbeddingLookup):
    def __init__(
        self,
        *,
        config: FanoutConfig,
        replicas: ReplicaSource,
        channels: ChannelPool,
        metrics: EntryMetrics,
        health: ReplicaHealth | None = None,
        knows_version: VersionKnowledge | None = None,
    ) -> None:
        self._config = config
        self._replicas = replicas
        self._channels = channels
        self._metrics = metrics
        self._health = health if health is not None else ReplicaHealth()
        self._order = ReplicaOrder(self._health, knows_version)
        self._models = [ps_model_name(config.entry_model_name, i) for i in range(replicas.num_ps)]
        # Per-request constants, built once: label children, encoded model_spec per (shard, version),
        # encoded input keys per table.
        self._shard_labels = [str(i) for i in range(replicas.num_ps)]
        self._attempt_metrics = [
            AttemptMetrics(
                retries=metrics.ps_retries.labels(label),
                errors=functools.partial(metrics.ps_errors.labels, label),
                latency=metrics.ps_latency.labels(label),
            )
            for label in self._shard_labels
        ]
        self._spec_bytes: dict[tuple[int, int], bytes] = {}
        # Each new version adds one entry per shard; a few versions' worth is all a serving entry uses at once.
        self._max_spec_bytes = _CACHED_VERSIONS * replicas.num_ps
        self._input_keys: dict[str, bytes] = {}
        coalesced = [metrics.ps_coalesced.labels(label) for label in self._shard_labels]
        self._shard_call = (
            ShardCoalescer(
                self._lookup_shard,
                max_fids=config.coalesce.max_fids,
                on_coalesced=lambda shard, n: coalesced[shard].inc(n),
            ).lookup
            if config.coalesce.enabled
            else self._lookup_shard
        )

    @property
    def num_ps(self) -> int:
        return self._replicas.num_ps

    def _ordered(self, shard: int, version: int) -> list[str]:
        return self._order.order(self._replicas.replicas(shard), version)

    async def lookup(
        self,
        version: int,
        fids: Mapping[str, Int64Array],
        dims: Mapping[str, int],
        timeout_s: float,
        urgent_s: float | None = None,
    ) -> LookupResult:
        now = time.monotonic()
        deadline = now + timeout_s
        urgent = None if urgent_s is None else now + urgent_s
        num_ps = self.num_ps
        # Per shard: (table, positions of its fids among the table's, those fids); positions None = all.
        plan: dict[int, list[tuple[str, Int64Array | None, Int64Array]]] = {}
        for table, table_fids in fids.items():
            if num_ps == 1:
                plan.setdefault(0, []).append((table, None, table_fids))
                continue
            shards = shard_of(table_fids, num_ps)
            counts = np.bincount(shards, minlength=num_ps).tolist()
            order = np.argsort(shards, kind="stable")
            start = 0
            for shard, count in enumerate(counts):
                if count:
                    positions = order[start : start + count]
                    plan.setdefault(shard, []).append((table, positions, table_fids[positions]))
                start += count
        shards_sorted = sorted(plan)
        call = self._shard_call
        results = await gather_first_inline(
            [
                call(shard, version, [(t, f) for t, _, f in plan[shard]], dims, deadline, urgent)
                for shard in shards_sorted
            ]
        )
        values: dict[str, Float32Array] = {}
        ps_versions: dict[int, int] = {}
        for shard, (outputs, reported) in zip(shards_sorted, results, strict=True):
            ps_versions[shard] = reported
            for table, where, _ in plan[shard]:
                if where is None:
                    values[table] = outputs[table]
                    continue
                if table not in values:
                    values[table] = np.zeros((len(fids[table]), dims[table]), dtype=np.float32)
                values[table][where] = outputs[table]
        return LookupResult(values, ps_versions)

    def _request(self, shard: int, version: int, parts: TableFids) -> bytes:
        spec = self._spec_bytes.get((shard, version))
        if spec is None:
            if len(self._spec_bytes) >= self._max_spec_bytes:
                self._spec_bytes.clear()  # versions roll over hourly: without this the map grows for ever
            spec = model_spec_field(self._models[shard], version, LOOKUP_SIGNATURE)
            self._spec_bytes[(shard, version)] = spec
        inputs = []
        for table, shard_fids in parts:
            key = self._input_keys.get(table)
            if key is None:
                key = self._input_keys[table] = input_key(f"{table}_id")
            inputs.append((key, shard_fids))
        return lookup_request(spec, inputs)

    async def _lookup_shard(
        self,
        shard: int,
        version: int,
        parts: TableFids,
        dims: Mapping[str, int],
        deadline: float,
        urgent: float | None = None,
    ) -> ShardAnswer:
        request = self._request(shard, version, parts)
        addresses = self._ordered(shard, version)
        if not addresses:
            raise UnavailableError(f"PS shard {shard} ({self._models[shard]}) has no known replica")
        try:
            response = await call_with_retries(
                addresses,
                lambda address, timeout: self._channels.lookup(address)(request, timeout=timeout),
                deadline=deadline,
                policy=self._config.retry,
                health=self._health,
                metrics=self._attempt_metrics[shard],
                urgent=urgent,
            )
        except ReplicasExhausted as error:
            message = f"PS shard {shard} ({self._models[shard]}) lookup failed: {error.last_error}"
            raise error.as_error(message) from None
        reported = int(response.model_spec.version.value) if response.model_spec.HasField("version") else version
        return self._decode(shard, parts, dims, response, version), reported

    def _decode(
        self,
        shard: int,
        parts: TableFids,
        dims: Mapping[str, int],
        response: predict_pb2.PredictResponse,
        version: int,
    ) -> dict[str, Float32Array]:
        outputs: dict[str, Float32Array] = {}
        response_outputs = response.outputs
        for table, shard_fids in parts:
            key = f"{table}_value"
            if key not in response_outputs:
                raise UnavailableError(f"PS shard {shard} version {version} answered without output {key!r}")
            expected = (len(shard_fids), dims[table])
            array = _float_matrix(response_outputs[key], expected)
            if array is None:
                try:
                    array = from_tensor_proto(response_outputs[key], key)
                except TensorCodecError as error:
                    raise UnavailableError(f"PS shard {shard}: bad output {key!r}: {error.message}") from error
            if array.shape == (expected[0], 0):
                # The shard holds no rows of this table yet (its export partition was empty): the PS cannot know
                # the width, and every fid is missing, which serves as zero rows like any missing fid.
                array = np.zeros(expected, dtype=np.float32)
            if array.shape != expected:
                raise UnavailableError(
                    f"PS shard {shard}: output {key!r} has shape {list(array.shape)}, "
                    f"expected [{expected[0]}, {expected[1]}] (table dim mismatch between entry and PS?)"
                )
            outputs[table] = array.astype(np.float32, copy=False)
        return outputs


def _float_matrix(tensor: tensor_pb2.TensorProto, shape: tuple[int, int]) -> Float32Array | None:
    """The common case, decoded with no generic checks: DT_FLOAT ``shape`` in ``tensor_content``.

    None when the tensor is anything else (the caller then takes the general decoder and its errors).
    """
    content = tensor.tensor_content
    if tensor.dtype != types_pb2.DT_FLOAT or len(content) != shape[0] * shape[1] * 4 or not content:
        return None
    dim = tensor.tensor_shape.dim
    if len(dim) != 2 or dim[0].size != shape[0] or dim[1].size != shape[1]:
        return None
    array: Float32Array = np.frombuffer(content, dtype="<f4").reshape(shape)
    return array
