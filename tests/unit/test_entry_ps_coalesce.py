"""Coalescing of concurrent PS lookups (``ps_coalesce``): merging, each caller's own rows, each caller's own
deadline, error propagation, version separation; and through ``PsFanout`` over scripted channels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
import pytest

from monolith_serving.core.errors import UnavailableError
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.ps_client import ChannelPool, FanoutConfig, PsFanout, RetryPolicy, gather_first_inline
from monolith_serving.entry.ps_coalesce import CoalesceConfig, ShardAnswer, ShardCoalescer, TableFids
from monolith_serving.entry.replica_source import StaticReplicaSource
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2

DIMS = {"user": 2, "item": 3}


def rows_of(fids: np.ndarray[Any, Any], dim: int, version: int = 1) -> np.ndarray[Any, Any]:
    """The row a fake PS holds for each fid: [fid, fid + 0.5, ...] plus 1000 * version."""
    return (fids[:, None] + 0.5 * np.arange(dim)[None, :] + 1000 * version).astype(np.float32)


class FakeShards:
    """A ``ShardCall`` that records every call and answers when its gate opens (or raises ``error``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, dict[str, list[int]], float]] = []
        self.gate = asyncio.Event()
        self.error: Exception | None = None
        self.started = asyncio.Event()
        self.answer_without_tables = False
        self.urgents: list[float | None] = []

    async def __call__(
        self,
        shard: int,
        version: int,
        fids: TableFids,
        dims: Mapping[str, int],
        deadline: float,
        urgent: float | None = None,
    ) -> ShardAnswer:
        self.calls.append((shard, version, {t: f.tolist() for t, f in fids}, deadline))
        self.urgents.append(urgent)
        self.started.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        if self.answer_without_tables:
            return {}, version
        return {t: rows_of(f, dims[t], version) for t, f in fids}, version


def arr(*values: int) -> np.ndarray[Any, Any]:
    return np.array(values, dtype=np.int64)


async def _wait_calls(shards: FakeShards, n: int) -> None:
    for _ in range(100):
        if len(shards.calls) >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {n} calls, saw {len(shards.calls)}")


def test_lookups_queued_behind_an_in_flight_call_go_as_one_merged_deduplicated_call() -> None:
    async def scenario() -> None:
        shards = FakeShards()
        coalescer = ShardCoalescer(shards)
        far = time.monotonic() + 10
        first = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(1, 2))], DIMS, far))
        await _wait_calls(shards, 1)
        queued = [
            asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(2, 7)), ("item", arr(5))], DIMS, far)),
            asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(9, 7, 1))], DIMS, far + 1)),
            asyncio.create_task(coalescer.lookup(0, 1, [("item", arr(4, 5, 6))], DIMS, far)),
        ]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(shards.calls) == 1, "queued lookups must wait for the in-flight call"
        shards.gate.set()
        results = await asyncio.gather(first, *queued)
        assert len(shards.calls) == 2
        _, _, merged, deadline = shards.calls[1]
        assert merged == {"user": [1, 2, 7, 9], "item": [4, 5, 6]}
        assert deadline == far + 1, "the merged call runs until its participants' latest deadline"
        asked = [
            {"user": arr(1, 2)},
            {"user": arr(2, 7), "item": arr(5)},
            {"user": arr(9, 7, 1)},
            {"item": arr(4, 5, 6)},
        ]
        for (outputs, reported), mine in zip(results, asked, strict=True):
            assert reported == 1
            assert set(outputs) == set(mine)
            for table, fids in mine.items():
                np.testing.assert_array_equal(outputs[table], rows_of(fids, DIMS[table]))

    asyncio.run(scenario())


def test_only_lookups_of_the_same_shard_and_version_are_merged() -> None:
    async def scenario() -> None:
        shards = FakeShards()
        coalescer = ShardCoalescer(shards)
        far = time.monotonic() + 10
        first = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(1))], DIMS, far))
        await _wait_calls(shards, 1)
        others = [
            asyncio.create_task(coalescer.lookup(0, 2, [("user", arr(1))], DIMS, far)),  # other version
            asyncio.create_task(coalescer.lookup(1, 1, [("user", arr(3))], DIMS, far)),  # other shard
        ]
        await _wait_calls(shards, 3)  # both sent at once: nothing in flight for their key
        shards.gate.set()
        (v1, _), (v2, reported2), _ = await asyncio.gather(first, *others)
        assert reported2 == 2
        np.testing.assert_array_equal(v1["user"], rows_of(arr(1), 2, version=1))
        np.testing.assert_array_equal(v2["user"], rows_of(arr(1), 2, version=2))
        assert sorted((s, v) for s, v, _, _ in shards.calls) == [(0, 1), (0, 2), (1, 1)]

    asyncio.run(scenario())


def test_a_queued_caller_stops_at_its_own_deadline_while_the_others_get_their_rows() -> None:
    async def scenario() -> None:
        shards = FakeShards()
        coalescer = ShardCoalescer(shards)
        now = time.monotonic()
        first = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(1))], DIMS, now + 10))
        await _wait_calls(shards, 1)
        hurried = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(2))], DIMS, now + 0.05))
        patient = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(3))], DIMS, now + 10))
        with pytest.raises(UnavailableError, match="deadline"):
            await asyncio.wait_for(hurried, 1.0)  # a TimeoutError here: the caller was left hanging
        assert time.monotonic() - now < 0.5
        assert not patient.done()
        shards.gate.set()
        outputs, _ = await patient
        np.testing.assert_array_equal(outputs["user"], rows_of(arr(3), 2))
        await first
        # The group did not wait for the stuck first call past a quarter of the hurried caller's time
        # (core.coalesce.PATIENCE): it ran beside it, the hurried caller in it unless the loop stalled past its
        # deadline first.
        assert shards.calls[1][2] in ({"user": [2, 3]}, {"user": [3]})

    asyncio.run(scenario())


def test_a_failing_merged_call_fails_every_participant() -> None:
    async def scenario() -> None:
        shards = FakeShards()
        coalescer = ShardCoalescer(shards)
        far = time.monotonic() + 10
        first = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(1))], DIMS, far))
        await _wait_calls(shards, 1)
        queued = [asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(k))], DIMS, far)) for k in (2, 3, 4)]
        await asyncio.sleep(0)
        shards.error = UnavailableError("PS shard 0 (ps_0) lookup failed: a:1: UNAVAILABLE")
        shards.gate.set()
        # A TimeoutError here: some participant was left hanging.
        results = await asyncio.wait_for(asyncio.gather(first, *queued, return_exceptions=True), 2.0)
        assert len(shards.calls) == 2
        for result in results:
            assert isinstance(result, UnavailableError)
            assert "ps_0" in result.message
        assert len({id(r) for r in results[1:]}) == 3, "each caller gets its own exception object"

    asyncio.run(scenario())


def test_a_merged_answer_that_cannot_be_split_fails_every_participant_instead_of_hanging() -> None:
    async def scenario() -> None:
        shards = FakeShards()
        coalescer = ShardCoalescer(shards)
        far = time.monotonic() + 10
        first = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(1))], DIMS, far))
        await _wait_calls(shards, 1)
        queued = [asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(k))], DIMS, far)) for k in (2, 3)]
        await asyncio.sleep(0)
        shards.answer_without_tables = True  # a broken answer: no rows at all (only the merged one is split)
        shards.gate.set()
        await first
        results = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 2.0)
        assert all(isinstance(r, KeyError) for r in results), results

    asyncio.run(scenario())


def test_a_cancelled_caller_does_not_disturb_the_others_and_no_call_is_left_queued() -> None:
    async def scenario() -> None:
        shards = FakeShards()
        coalescer = ShardCoalescer(shards)
        far = time.monotonic() + 10
        first = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(1))], DIMS, far))
        await _wait_calls(shards, 1)
        gone = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(2))], DIMS, far))
        kept = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(3))], DIMS, far))
        await asyncio.sleep(0)
        gone.cancel()
        first.cancel()  # the caller that sent the in-flight call: the queue must still be sent
        shards.gate.set()
        outputs, _ = await kept
        np.testing.assert_array_equal(outputs["user"], rows_of(arr(3), 2))
        assert gone.cancelled() and first.cancelled()
        assert shards.calls[1][2] == {"user": [3]}
        # Idle again: the next lookup goes straight out.
        await coalescer.lookup(0, 1, [("user", arr(4))], DIMS, far)
        assert len(shards.calls) == 3

    asyncio.run(scenario())


def test_a_group_reaching_max_fids_is_sent_without_waiting() -> None:
    async def scenario() -> None:
        shards = FakeShards()
        coalescer = ShardCoalescer(shards, max_fids=4)
        far = time.monotonic() + 10
        tasks = [asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(1))], DIMS, far))]
        await _wait_calls(shards, 1)
        tasks += [asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(k, k + 1))], DIMS, far)) for k in (10, 20)]
        await _wait_calls(shards, 2)  # 4 fids queued: sent while the first call is still in flight
        assert shards.calls[1][2] == {"user": [10, 11, 20, 21]}
        shards.gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


# -- through PsFanout -------------------------------------------------------------------------------------


class SlowChannels(ChannelPool):
    """Lookup calls without sockets, each taking ``delay_s``; ``down:*`` answers UNAVAILABLE."""

    def __init__(self, delay_s: float = 0.02) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.requests: list[tuple[str, predict_pb2.PredictRequest]] = []

    def lookup(self, address: str) -> Any:
        async def call(request: bytes, *, timeout: float) -> predict_pb2.PredictResponse:
            parsed = predict_pb2.PredictRequest.FromString(request)
            self.requests.append((address, parsed))
            await asyncio.sleep(self.delay_s)
            if address.startswith("down"):
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused"
                )
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(parsed.model_spec)
            for name, tensor in parsed.inputs.items():
                table = name.removesuffix("_id")
                fids = np.frombuffer(tensor.tensor_content, dtype="<i8")
                response.outputs[f"{table}_value"].CopyFrom(to_tensor_proto(rows_of(fids, DIMS[table])))
            return response

        return call


def _fanout(channels: ChannelPool, shards: list[list[str]], *, coalesce: bool = True) -> PsFanout:
    return PsFanout(
        config=FanoutConfig(
            entry_model_name="entry", retry=RetryPolicy(retry=2), coalesce=CoalesceConfig(enabled=coalesce)
        ),
        replicas=StaticReplicaSource(shards),
        channels=channels,
        metrics=EntryMetrics(),
    )


@pytest.mark.parametrize("coalesce", [True, False])
def test_concurrent_fanout_lookups_get_their_own_rows_in_fewer_calls(coalesce: bool) -> None:
    async def scenario() -> None:
        channels = SlowChannels()
        fanout = _fanout(channels, [["down:0", "a:0"], ["b:1"]], coalesce=coalesce)
        rng = np.random.default_rng(3)
        asks = [
            {"user": np.unique(rng.integers(-50, 50, 12)), "item": np.unique(rng.integers(0, 40, 9))} for _ in range(8)
        ]
        results = await asyncio.gather(*(fanout.lookup(1, ask, DIMS, timeout_s=5.0) for ask in asks))
        for ask, result in zip(asks, results, strict=True):
            assert result.ps_versions == {0: 1, 1: 1}
            for table, fids in ask.items():
                np.testing.assert_array_equal(result.values[table], rows_of(fids, DIMS[table]))
        answered = [a for a, _ in channels.requests if not a.startswith("down")]
        if coalesce:
            assert len(answered) <= 4, "8 concurrent lookups over 2 shards: one call, then one merged call each"
        else:
            assert len(answered) == 16

    asyncio.run(scenario())


def test_gather_first_inline_keeps_order_and_cancels_the_others_on_an_error() -> None:
    async def scenario() -> None:
        async def value(v: int, delay_s: float) -> int:
            await asyncio.sleep(delay_s)
            return v

        assert await gather_first_inline([value(1, 0.02), value(2, 0.0), value(3, 0.01)]) == [1, 2, 3]
        assert await gather_first_inline([]) == []

        started: list[str] = []

        async def slow() -> int:
            started.append("slow")
            await asyncio.sleep(10)
            return 0

        async def failing() -> int:
            await asyncio.sleep(0.01)
            raise UnavailableError("PS shard 0 lookup failed")

        slow_call = slow()
        began = time.monotonic()
        with pytest.raises(UnavailableError):
            await gather_first_inline([failing(), slow_call])
        assert time.monotonic() - began < 1.0
        await asyncio.sleep(0)
        assert started == ["slow"] and slow_call.cr_frame is None, "the other call was cancelled"

    asyncio.run(scenario())


def test_a_merged_lookup_is_as_urgent_as_its_most_urgent_caller() -> None:
    async def scenario() -> None:
        shards = FakeShards()
        coalescer = ShardCoalescer(shards)
        now = time.monotonic()
        first = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(1))], DIMS, now + 10))
        await _wait_calls(shards, 1)
        relaxed = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(2))], DIMS, now + 10))
        urgent = asyncio.create_task(coalescer.lookup(0, 1, [("user", arr(3))], DIMS, now + 10, urgent=now + 4))
        shards.gate.set()
        await asyncio.gather(first, relaxed, urgent)
        assert shards.urgents[0] == now + 10  # alone: its own deadline, nothing more urgent
        assert shards.calls[1][3] == now + 10 and shards.urgents[1] == now + 4

    asyncio.run(scenario())
