"""A PS replica that never answers (its host vanished, no RST) must not hold the request until the client's
deadline: the fan-out splits the deadline over its attempts and the other replica answers in time. And how the
fan-out reads a shard's answer whose table has no rows there, and that its cache of encoded model_specs stays
bounded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
import pytest

from monolith_serving.core.errors import DeadlineExceededError, UnavailableError
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.ps_client import ChannelPool, FanoutConfig, PsFanout, RetryPolicy
from monolith_serving.entry.replica_source import StaticReplicaSource
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2


class ScriptedChannels(ChannelPool):
    """Lookup calls without sockets: ``hung:*`` sleeps until its timeout, ``down:*`` refuses at once, others answer
    zero rows of ``width``."""

    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.width = width
        self.timeouts: list[tuple[str, float]] = []
        self.requests: list[bytes] = []

    def lookup(self, address: str) -> Any:
        async def call(request: bytes, *, timeout: float) -> predict_pb2.PredictResponse:
            self.timeouts.append((address, timeout))
            self.requests.append(request)
            if address.startswith("down"):
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused"
                )
            if address.startswith("hung"):
                await asyncio.sleep(timeout)
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Deadline Exceeded"
                )
            parsed = predict_pb2.PredictRequest.FromString(request)
            n = int(parsed.inputs["user_id"].tensor_shape.dim[0].size)
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(parsed.model_spec)
            response.outputs["user_value"].CopyFrom(to_tensor_proto(np.zeros((n, self.width), np.float32)))
            return response

        return call


def _fanout(channels: ScriptedChannels, replicas: list[str], retry: int = 2) -> PsFanout:
    return PsFanout(
        config=FanoutConfig(entry_model_name="entry", retry=RetryPolicy(retry=retry, min_attempt_s=0.05)),
        replicas=StaticReplicaSource([replicas]),
        channels=channels,
        metrics=EntryMetrics(),
    )


def test_a_hung_replica_gets_a_share_of_the_deadline_and_the_other_answers() -> None:
    async def scenario() -> None:
        channels = ScriptedChannels()
        fanout = _fanout(channels, ["hung:1", "good:1"])
        for _ in range(4):  # the rotation puts the hung replica first at least once
            started = time.monotonic()
            await fanout.lookup(1, {"user": np.array([3, 5], np.int64)}, {"user": 2}, timeout_s=0.9)
            assert time.monotonic() - started < 0.8
        hung = [t for a, t in channels.timeouts if a == "hung:1"]
        assert hung, "the hung replica was never tried; the test proved nothing"
        assert all(t <= 0.9 / 3 + 1e-3 for t in hung)

    asyncio.run(scenario())


def test_the_only_replica_gets_the_whole_deadline() -> None:
    async def scenario() -> None:
        channels = ScriptedChannels()
        await _fanout(channels, ["good:1"]).lookup(1, {"user": np.array([3], np.int64)}, {"user": 2}, timeout_s=0.9)
        assert channels.timeouts[0][1] > 0.8

    asyncio.run(scenario())


def test_a_table_without_rows_on_the_shard_answers_zero_rows_of_the_spec_dim() -> None:
    # The PS cannot know the width of a table whose export partition was empty; it answers [n, 0].
    async def scenario() -> None:
        fanout = _fanout(ScriptedChannels(width=0), ["good:1"])
        result = await fanout.lookup(1, {"user": np.array([3, 5], np.int64)}, {"user": 2}, timeout_s=0.9)
        assert result.values["user"].tolist() == [[0, 0], [0, 0]]
        with pytest.raises(UnavailableError, match=r"shape \[2, 3\], expected \[2, 2\]"):
            await _fanout(ScriptedChannels(width=3), ["good:1"]).lookup(
                1, {"user": np.array([3, 5], np.int64)}, {"user": 2}, timeout_s=0.9
            )

    asyncio.run(scenario())


def test_attempts_are_sized_for_the_most_urgent_request_of_a_merged_pass() -> None:
    """A merged pass serves requests with different deadlines. Sized for the latest (3 s), a first attempt on a
    hung replica would take 1 s and the request that stops waiting at 0.3 s would never see the retry; sized for
    it, the retry on the other replica answers in time."""

    async def scenario() -> None:
        channels = ScriptedChannels()
        fanout = _fanout(channels, ["hung:1", "good:1"])
        for _ in range(4):  # the rotation puts the hung replica first at least once
            started = time.monotonic()
            await fanout.lookup(1, {"user": np.array([3, 5], np.int64)}, {"user": 2}, timeout_s=3.0, urgent_s=0.3)
            assert time.monotonic() - started < 0.3
        hung = [t for a, t in channels.timeouts if a == "hung:1"]
        assert hung, "the hung replica was never tried; the test proved nothing"
        assert all(t <= 0.3 / 3 + 1e-3 for t in hung)

    asyncio.run(scenario())


def test_a_single_replica_still_gets_the_whole_deadline_of_a_merged_pass() -> None:
    async def scenario() -> None:
        channels = ScriptedChannels()
        fanout = _fanout(channels, ["good:1"])
        await fanout.lookup(1, {"user": np.array([3], np.int64)}, {"user": 2}, timeout_s=3.0, urgent_s=0.3)
        assert channels.timeouts[0][1] > 2.9  # retrying the same replica early would only double its work

    asyncio.run(scenario())


def test_encoded_model_specs_stay_bounded_as_versions_roll_over() -> None:
    """An entry serves for months while versions roll over hourly; each version's encoded model_spec is cached
    per shard, and the cache must not keep every version it ever looked up."""

    async def scenario() -> None:
        channels = ScriptedChannels()
        fanout = _fanout(channels, ["good:1"])
        for version in range(1, 201):
            await fanout.lookup(version, {"user": np.array([3], np.int64)}, {"user": 2}, timeout_s=0.9)
        sent = {predict_pb2.PredictRequest.FromString(r).model_spec.version.value for r in channels.requests}
        assert sent == set(range(1, 201)), "every lookup must still name its own version"
        assert len(fanout._spec_bytes) <= 8 * fanout._replicas.num_ps

    asyncio.run(scenario())


def test_a_lookup_whose_deadline_ran_out_is_deadline_exceeded_not_unavailable() -> None:
    """A proxy ejects an entry replica after UNAVAILABLE answers; a caller's short deadline must not read as that.
    Replicas that refuse while time is left are UNAVAILABLE."""

    async def scenario() -> None:
        fids = {"user": np.array([3], np.int64)}
        with pytest.raises(DeadlineExceededError, match="deadline passed|DEADLINE_EXCEEDED"):
            await _fanout(ScriptedChannels(), ["hung:1", "hung:2"]).lookup(1, fids, {"user": 2}, timeout_s=0.2)
        with pytest.raises(DeadlineExceededError):
            await _fanout(ScriptedChannels(), ["good:1"]).lookup(1, fids, {"user": 2}, timeout_s=0.0)
        with pytest.raises(UnavailableError, match="connection refused"):
            await _fanout(ScriptedChannels(), ["down:1", "down:2"]).lookup(1, fids, {"user": 2}, timeout_s=5.0)

    asyncio.run(scenario())
