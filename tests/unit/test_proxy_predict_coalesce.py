"""Predict coalescing in the proxy (``proxy.predict_coalesce``): which requests merge, the merged request,
splitting the response by rows, and ProxyCore on a fake upstream (fewer calls, each client its own rows,
a bad member failing alone, ineligible requests untouched, each client's own deadline), plus the flags."""

from __future__ import annotations

import argparse
import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast
from unittest import mock

import grpc
import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.serving_call import PREDICT, CallContext, Metadata, RpcStatusError, UpstreamReply
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2
from monolith_serving.proxy import predict_coalesce
from monolith_serving.proxy.config import config_from_args
from monolith_serving.proxy.core import CoreConfig, ProxyCore
from monolith_serving.proxy.endpoints import StaticEndpointSource
from monolith_serving.proxy.main import configure
from monolith_serving.proxy.metrics import ProxyMetrics
from monolith_serving.proxy.predict_coalesce import (
    PredictCoalescing,
    coalescable,
    merge_requests,
    split_response,
)
from monolith_serving.proxy.router import OutlierPolicy, Router
from monolith_serving.proxy.upstream import UpstreamPool


def _sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def _request(
    strings: Sequence[bytes], *, name: str = "instances", model: str = "entry", shape: Sequence[int] | None = None
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    tensor = request.inputs[name]
    tensor.dtype = types_pb2.DT_STRING
    tensor.string_val.extend(strings)
    for size in [len(strings)] if shape is None else shape:
        tensor.tensor_shape.dim.add().size = size
    return request


def _rows(*values: int) -> list[bytes]:
    return [str(v).encode() for v in values]


def _response(outputs: dict[str, tensor_pb2.TensorProto]) -> bytes:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "entry"
    response.model_spec.version.value = 3
    for name, tensor in outputs.items():
        response.outputs[name].CopyFrom(tensor)
    return response.SerializeToString()


def _outputs(response: bytes) -> dict[str, np.ndarray]:
    parsed = predict_pb2.PredictResponse.FromString(response)
    assert parsed.model_spec.name == "entry" and parsed.model_spec.version.value == 3
    return {name: from_tensor_proto(tensor) for name, tensor in parsed.outputs.items()}


# ---- which requests merge ------------------------------------------------------------------------------------


def test_entry_string_inputs_are_coalescable_and_keyed_by_spec_filter_and_input() -> None:
    plain = coalescable("entry", _request(_rows(1, 2)).SerializeToString())
    assert plain is not None and plain.rows == 2 and plain.input_name == "instances"
    examples = coalescable("entry", _request(_rows(1), name="examples").SerializeToString())
    assert examples is not None and examples.key != plain.key
    filtered = _request(_rows(1, 2))
    filtered.output_filter.append("scores")
    other_filter = coalescable("entry", filtered.SerializeToString())
    assert other_filter is not None and other_filter.key != plain.key
    pinned = _request(_rows(1, 2))
    pinned.model_spec.version.value = 7
    other_version = coalescable("entry", pinned.SerializeToString())
    assert other_version is not None and other_version.key != plain.key
    same = coalescable("entry", _request(_rows(5, 6, 7)).SerializeToString())
    assert same is not None and same.key == plain.key


def _not_coalescable() -> list[bytes]:
    two_inputs = _request(_rows(1))
    two_inputs.inputs["dense"].CopyFrom(to_tensor_proto(np.ones((1, 2), np.float32)))
    numeric = predict_pb2.PredictRequest()
    numeric.model_spec.name = "entry"
    numeric.inputs["instances"].CopyFrom(to_tensor_proto(np.ones(2, np.float32)))
    versioned = _request(_rows(1))
    versioned.inputs["instances"].version_number = 2
    named_dim = _request(_rows(1))
    named_dim.inputs["instances"].tensor_shape.dim[0].name = "batch"
    return [
        b"\xff\xfe\xfd",  # not a protobuf
        _request(_rows(1), name="features").SerializeToString(),  # not an entry input
        two_inputs.SerializeToString(),
        numeric.SerializeToString(),
        _request(_rows(1, 2), shape=[1, 2]).SerializeToString(),  # 2-D
        _request(_rows(1, 2), shape=[3]).SerializeToString(),  # shape does not match the strings
        _request([], shape=[0]).SerializeToString(),  # empty
        versioned.SerializeToString(),
        named_dim.SerializeToString(),
        _request(_rows(1)).SerializeToString() + b"\xa0\x06\x01",  # an unknown field (100, varint 1)
    ]


@pytest.mark.parametrize("request_bytes", _not_coalescable())
def test_everything_else_is_not_coalescable(request_bytes: bytes) -> None:
    assert coalescable("entry", request_bytes) is None


def test_merged_request_concatenates_the_examples_in_order() -> None:
    first = _request(_rows(1, 2))
    first.output_filter.append("scores")
    second = _request(_rows(3))
    second.output_filter.append("scores")
    members = [coalescable("entry", r.SerializeToString()) for r in (first, second, first)]
    merged = predict_pb2.PredictRequest.FromString(merge_requests([m for m in members if m is not None]))
    assert merged.model_spec == first.model_spec and list(merged.output_filter) == ["scores"]
    tensor = merged.inputs["instances"]
    assert list(tensor.string_val) == _rows(1, 2, 3, 1, 2)
    assert [d.size for d in tensor.tensor_shape.dim] == [5] and tensor.dtype == types_pb2.DT_STRING


# ---- splitting the response by rows ---------------------------------------------------------------------------


def test_split_tensor_content_outputs_1d_and_2d() -> None:
    scores = np.arange(6, dtype=np.float32).reshape(6, 1)
    embeddings = np.arange(18, dtype=np.int64).reshape(6, 3)
    pieces = split_response(
        _response({"scores": to_tensor_proto(scores), "emb": to_tensor_proto(embeddings)}), [2, 1, 3]
    )
    assert pieces is not None and len(pieces) == 3
    bounds = [(0, 2), (2, 3), (3, 6)]
    for piece, (start, end) in zip(pieces, bounds, strict=True):
        outputs = _outputs(piece)
        np.testing.assert_array_equal(outputs["scores"], scores[start:end])
        np.testing.assert_array_equal(outputs["emb"], embeddings[start:end])


def test_split_typed_value_fields() -> None:
    floats = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    floats.tensor_shape.dim.add().size = 3
    floats.tensor_shape.dim.add().size = 2
    names = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a", b"b", b"c"])
    names.tensor_shape.dim.add().size = 3
    constant = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[7])  # one value fills the shape
    constant.tensor_shape.dim.add().size = 3
    pieces = split_response(_response({"f": floats, "s": names, "c": constant}), [1, 2])
    assert pieces is not None
    first, second = (_outputs(p) for p in pieces)
    np.testing.assert_array_equal(first["f"], np.array([[0.5, 1.5]], np.float32))
    np.testing.assert_array_equal(second["f"], np.array([[2.5, 3.5], [4.5, 5.5]], np.float32))
    assert list(first["s"]) == [b"a"] and list(second["s"]) == [b"b", b"c"]
    np.testing.assert_array_equal(first["c"], np.array([7], np.int32))
    np.testing.assert_array_equal(second["c"], np.array([7, 7], np.int32))


def test_an_output_not_cut_by_rows_cannot_be_split() -> None:
    scores = to_tensor_proto(np.zeros((4, 1), np.float32))
    assert split_response(_response({"scores": scores}), [2, 1]) is None  # dim 0 is 4, not 3
    scalar = to_tensor_proto(np.float32(1.0).reshape(()))
    assert (
        split_response(_response({"scores": to_tensor_proto(np.zeros((3, 1), np.float32)), "s": scalar}), [2, 1])
        is None
    )
    short = to_tensor_proto(np.zeros((3, 2), np.float32))
    short.tensor_content = short.tensor_content[:-4]
    assert split_response(_response({"scores": short}), [2, 1]) is None
    assert split_response(b"\xff\xfe", [1, 1]) is None


# ---- ProxyCore on a fake upstream -----------------------------------------------------------------------------


class ScoringPool:
    """A fake entry: each example ``b"<int>"`` scores that int (as float32 [n, 1]); ``b"bad"`` makes the
    whole request INVALID_ARGUMENT, as the entry does. Calls wait for ``release`` when it is set."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, Metadata, float | None]] = []
        self.release: asyncio.Event | None = None
        self.down = False
        self.wrong_rows = False

    async def call(
        self, address: str, method: str, request: bytes, *, timeout_s: float | None, metadata: Metadata
    ) -> UpstreamReply:
        self.requests.append((request, metadata, timeout_s))
        if self.release is not None:
            try:  # like a real channel, the call ends at its deadline
                await asyncio.wait_for(self.release.wait(), timeout_s)
            except TimeoutError:
                raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        if self.down:
            raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "connection refused", (("x-why", "down"),))
        strings = list(predict_pb2.PredictRequest.FromString(request).inputs["instances"].string_val)
        if b"bad" in strings:
            raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT, "instances[?]: not an Instance")
        rows = len(strings) + (1 if self.wrong_rows and len(strings) > 2 else 0)
        scores = np.array([float(s) for s in strings] + [0.0] * (rows - len(strings)), np.float32).reshape(-1, 1)
        return UpstreamReply(_response({"scores": to_tensor_proto(scores)}), (("x-monolith-ps-versions", "ps_0=1"),))

    async def probe(self, address: str, timeout_s: float) -> bool:
        return True

    async def close_addresses(self, addresses: Sequence[str]) -> None:
        return None


def _core(pool: ScoringPool, **coalescing: Any) -> tuple[ProxyCore, ProxyMetrics]:
    metrics = ProxyMetrics()
    core = ProxyCore(
        source=StaticEndpointSource(["a:1"], models=["entry"]),
        router=Router(OutlierPolicy()),
        pool=cast(UpstreamPool, pool),
        metrics=metrics,
        config=CoreConfig(coalescing=PredictCoalescing(**coalescing)),
    )
    return core, metrics


def _ctx(request_id: str, timeout_s: float | None = 10.0) -> CallContext:
    return CallContext(request_id=request_id, timeout_s=timeout_s, protocol="grpc")


def _count(metrics: ProxyMetrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _start(
    core: ProxyCore, request: predict_pb2.PredictRequest, request_id: str, **ctx: Any
) -> asyncio.Task[Any]:
    task = asyncio.create_task(core.call(PREDICT, request.SerializeToString(), _ctx(request_id, **ctx)))
    await _settle()
    return task


def _scores(reply: UpstreamReply) -> list[float]:
    return [float(v) for v in _outputs(reply.response)["scores"].reshape(-1)]


@_sync
async def test_concurrent_predicts_share_one_upstream_call_and_each_gets_its_own_rows() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, metrics = _core(pool)
    first = await _start(core, _request(_rows(100)), "r0")  # alone: nothing in flight
    batches = [_rows(1, 2), _rows(3), _rows(4, 5, 6), _rows(7)]
    queued = [await _start(core, _request(b), f"r{i + 1}") for i, b in enumerate(batches)]
    pool.release.set()
    assert _scores(await first) == [100.0]
    replies = [await t for t in queued]
    for batch, reply in zip(batches, replies, strict=True):
        assert _scores(reply) == [float(s) for s in batch]
        assert reply.trailing == (("x-monolith-ps-versions", "ps_0=1"),)
    assert len(pool.requests) == 2  # five client requests, two upstream calls
    assert pool.requests[0][0] == _request(_rows(100)).SerializeToString()  # alone: the client's bytes
    assert dict(pool.requests[1][1])["x-request-id"] == "r1+3"
    assert _count(metrics, "proxy_predicts_coalesced_total", {"model": "entry"}) == 4
    ok = {"model": "entry", "method": "Predict", "protocol": "grpc", "code": "OK"}
    assert _count(metrics, "proxy_requests_total", ok) == 5
    assert _count(metrics, "proxy_upstream_latency_seconds_count", {"method": "Predict"}) == 2


@_sync
async def test_max_rows_bounds_a_merged_call() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, _metrics = _core(pool, max_rows=4)
    first = await _start(core, _request(_rows(0)), "r0")
    queued = [await _start(core, _request(_rows(i, i)), f"r{i}") for i in range(1, 5)]
    pool.release.set()
    await first
    for i, task in enumerate(queued, start=1):
        assert _scores(await task) == [float(i), float(i)]
    # Two rows each, at most four rows per call: the four queued requests went as two calls of two.
    sizes = [len(predict_pb2.PredictRequest.FromString(r).inputs["instances"].string_val) for r, _, _ in pool.requests]
    assert sizes == [1, 4, 4]


@_sync
async def test_a_bad_member_fails_alone_and_the_others_succeed() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, metrics = _core(pool)
    first = await _start(core, _request(_rows(9)), "r0")
    good = await _start(core, _request(_rows(1, 2)), "good1")
    bad = await _start(core, _request([b"3", b"bad"]), "bad")
    good2 = await _start(core, _request(_rows(4)), "good2")
    pool.release.set()
    await first
    assert _scores(await good) == [1.0, 2.0] and _scores(await good2) == [4.0]
    with pytest.raises(RpcStatusError) as caught:
        await bad
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    # first, the merged call, then each of the three alone with its own bytes and request id
    assert len(pool.requests) == 5
    assert {dict(m)["x-request-id"] for _, m, _ in pool.requests[2:]} == {"good1", "bad", "good2"}
    bad_labels = {"model": "entry", "method": "Predict", "protocol": "grpc", "code": "INVALID_ARGUMENT"}
    assert _count(metrics, "proxy_requests_total", bad_labels) == 1


@_sync
async def test_an_unavailable_upstream_fails_every_member_without_resending() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, _metrics = _core(pool)
    first = await _start(core, _request(_rows(9)), "r0")
    queued = [await _start(core, _request(_rows(i)), f"r{i}") for i in range(3)]
    pool.down = True
    pool.release.set()
    for task in (first, *queued):
        with pytest.raises(RpcStatusError) as caught:
            await task
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE and ("x-why", "down") in caught.value.trailing
    assert len(pool.requests) == 2


@_sync
async def test_an_unsplittable_response_resends_each_member_alone() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    pool.wrong_rows = True  # requests of more than two rows get one row too many
    core, _metrics = _core(pool)
    first = await _start(core, _request(_rows(9)), "r0")
    queued = [await _start(core, _request(_rows(i)), f"r{i}") for i in range(3)]
    pool.release.set()
    await first
    assert [_scores(await t) for t in queued] == [[0.0], [1.0], [2.0]]
    assert len(pool.requests) == 5


@_sync
async def test_ineligible_requests_are_forwarded_byte_identical_under_load() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, _metrics = _core(pool)
    first = await _start(core, _request(_rows(9)), "r0")
    odd = _request(_rows(1, 2), shape=[1, 2])
    odd_task = await _start(core, odd, "odd")
    others = [await _start(core, _request(_rows(i)), f"r{i}") for i in (5, 6)]
    pool.release.set()
    await asyncio.gather(first, odd_task, *others)
    sent = [r for r, _, _ in pool.requests]
    # the odd one as the client sent it, while the two eligible ones queued behind the first were merged
    assert sent[1] == odd.SerializeToString() and len(sent) == 3


@_sync
async def test_a_queued_member_stops_waiting_at_its_own_deadline() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, _metrics = _core(pool)
    first = await _start(core, _request(_rows(9)), "r0")
    patient = await _start(core, _request(_rows(1)), "patient")
    hurried = await _start(core, _request(_rows(2)), "hurried", timeout_s=0.05)
    with pytest.raises(RpcStatusError) as caught:
        await hurried
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert not first.done() and not patient.done()  # it did not wait for the call in flight
    # The group went upstream beside the stuck first call once a quarter of the hurried member's time had passed
    # (core.coalesce.PATIENCE); the hurried one was still in it unless the loop stalled past its deadline first.
    assert len(pool.requests) == 2
    grouped = list(predict_pb2.PredictRequest.FromString(pool.requests[1][0]).inputs["instances"].string_val)
    assert grouped in (_rows(1, 2), _rows(1))
    pool.release.set()
    await first
    assert _scores(await patient) == [1.0]


@_sync
async def test_cancelling_one_queued_client_leaves_the_others() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, _metrics = _core(pool)
    first = await _start(core, _request(_rows(9)), "r0")
    leaving = await _start(core, _request(_rows(1)), "leaving")
    staying = [await _start(core, _request(_rows(i)), f"s{i}") for i in (2, 3)]
    leaving.cancel()
    pool.release.set()
    await first
    assert [_scores(await t) for t in staying] == [[2.0], [3.0]]
    assert list(predict_pb2.PredictRequest.FromString(pool.requests[1][0]).inputs["instances"].string_val) == _rows(
        2, 3
    )
    assert core.admission.in_flight == 0


@_sync
async def test_a_large_predict_goes_alone_unparsed_while_the_loop_keeps_turning() -> None:
    """Parsing and merging hold the event loop (and a thread would not help: upb holds the GIL), so a request
    over max_request_bytes is never parsed. Parsing is stood in for by a wait that only the event loop can end:
    had the large request been parsed on the loop, the wait would run out with the loop stuck in it."""
    loop_turned = threading.Event()
    parsed_sizes: list[int] = []
    stalled: list[int] = []
    parse = predict_coalesce.coalescable

    def slow_parse(model: str, request: bytes) -> predict_coalesce.Coalescable | None:
        parsed_sizes.append(len(request))
        if len(request) > 1000:
            asyncio.get_running_loop().call_soon(loop_turned.set)
            if not loop_turned.wait(2.0):
                stalled.append(len(request))
        return parse(model, request)

    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, metrics = _core(pool, max_request_bytes=1000)
    large = _request([str(v).zfill(600).encode() for v in (7, 8)])  # two rows, ~1.2 KB
    with mock.patch.object(predict_coalesce, "coalescable", slow_parse):
        first = await _start(core, _request(_rows(9)), "r0")
        large_task = await _start(core, large, "large")
        queued = [await _start(core, _request(_rows(i)), f"r{i}") for i in (1, 2)]
        # Not queued behind the call in flight: it went upstream beside it, as the client's bytes.
        assert [r for r, _, _ in pool.requests] == [_request(_rows(9)).SerializeToString(), large.SerializeToString()]
        pool.release.set()
        assert _scores(await large_task) == [7.0, 8.0]
        assert [_scores(await t) for t in (first, *queued)] == [[9.0], [1.0], [2.0]]
    assert stalled == [] and max(parsed_sizes) < 1000, parsed_sizes
    assert len(pool.requests) == 3  # the small queued ones still merged
    assert _count(metrics, "proxy_predicts_coalesced_total", {"model": "entry"}) == 2


@_sync
async def test_disabled_forwards_every_request_on_its_own() -> None:
    pool = ScoringPool()
    pool.release = asyncio.Event()
    core, _metrics = _core(pool, enabled=False)
    tasks = [await _start(core, _request(_rows(i)), f"r{i}") for i in range(4)]
    pool.release.set()
    assert [_scores(await t) for t in tasks] == [[0.0], [1.0], [2.0], [3.0]]
    assert len(pool.requests) == 4


# ---- flags ------------------------------------------------------------------------------------------------------


def _config(*argv: str) -> CoreConfig:
    parser = argparse.ArgumentParser()
    configure(parser)
    return config_from_args(parser.parse_args(["--entry_targets", "a:1", *argv]), {}).core


def test_flags_default_on_and_take_both_spellings() -> None:
    assert _config().coalescing == PredictCoalescing(enabled=True, max_rows=256)
    assert _config("--coalesce-predicts", "false", "--coalesce_max_rows", "32").coalescing == PredictCoalescing(
        enabled=False, max_rows=32
    )
    assert _config("--coalesce_predicts=true", "--coalesce-max-rows=8").coalescing.max_rows == 8
    with pytest.raises(InvalidArgumentError, match="--coalesce_max_rows"):
        _config("--coalesce_max_rows", "0")
