"""The REST gateway on a real aiohttp server over loopback, in front of ProxyCore on a fake of our own
UpstreamPool: bad input is a 4xx (never a 500), one deadline covers every core call of a request, and every
request is counted once, refused ones too, without a label per made-up name. Backpressure comes before the body:
a request takes one admission slot before its body is read and holds it until answered, a body is read only as
far as the byte budget lets it, and decode steps never wait in the thread pool's queue. Large answers are written
on the same threads, within the request's deadline and the byte budget, while the gateway serves other requests.

Faults needing real entries (slow metadata and Predict together) are in test_proxy_routing.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from unittest import mock

import aiohttp
import grpc
import numpy as np
import pytest
import yarl

from monolith_serving.core import rest_codec, rest_gateway
from monolith_serving.core.aio_wait import within
from monolith_serving.core.errors import ResourceExhaustedError
from monolith_serving.core.rest_codec import (
    DecodeCancel,
    DecodeCancelled,
    PredictBody,
    parse_predict_body,
    predict_response_text,
)
from monolith_serving.core.rest_gateway import MAX_VERSION, RestConfig, RestGateway
from monolith_serving.core.serving_call import CallContext, Metadata, RpcStatusError, UpstreamReply
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.proto_gen.tensorflow.core.protobuf import meta_graph_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)
from monolith_serving.proxy.core import CoreConfig, ProxyCore
from monolith_serving.proxy.endpoints import StaticEndpointSource
from monolith_serving.proxy.metrics import ProxyMetrics
from monolith_serving.proxy.router import OutlierPolicy, Router
from monolith_serving.proxy.upstream import UpstreamPool

pytestmark = pytest.mark.integration

PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
CLASSIFY = "/tensorflow.serving.PredictionService/Classify"
REGRESS = "/tensorflow.serving.PredictionService/Regress"
TIMEOUT_S = 10.0


def _sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class FakeClock:
    """The gateway's clock; the fake upstream moves it to stand for time spent upstream."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _metadata_reply(request: bytes, inputs: dict[str, int]) -> bytes:
    """A ``serving_default`` signature with ``inputs`` (name -> DataType) and one DT_FLOAT output ``y`` of shape
    [-1, 1], for the version the request names (else 1)."""
    spec = get_model_metadata_pb2.GetModelMetadataRequest.FromString(request).model_spec
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for name, dtype in inputs.items():
        signature.inputs[name].dtype = dtype
    output = signature.outputs["y"]
    output.name = "y:0"
    output.dtype = types_pb2.DT_FLOAT
    output.tensor_shape.dim.add(size=-1)
    output.tensor_shape.dim.add(size=1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def["serving_default"].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = spec.name
    response.model_spec.version.value = spec.version.value if spec.HasField("version") else 1
    response.metadata["signature_def"].Pack(signatures)
    return response.SerializeToString()


def _predict_reply() -> bytes:
    response = predict_pb2.PredictResponse()
    output = response.outputs["y"]
    output.dtype = types_pb2.DT_FLOAT
    output.tensor_shape.dim.add().size = 1
    output.float_val.append(0.5)
    return response.SerializeToString()


@dataclass
class FakeUpstream:
    """Implements the UpstreamPool methods the core uses; records (method, timeout_s) of every call."""

    clock: FakeClock
    metadata_takes_s: float = 0.0  # gateway-clock time a GetModelMetadata takes
    calls: list[tuple[str, float | None]] = field(default_factory=list)
    predict_gate: asyncio.Event | None = None  # set: a Predict waits for it (holds its request in flight)
    predict_started: asyncio.Event = field(default_factory=asyncio.Event)
    signature: dict[str, int] = field(default_factory=lambda: {"x": types_pb2.DT_FLOAT})  # input name -> DataType
    predict_reply: bytes = field(default_factory=_predict_reply)
    replies: dict[str, bytes] = field(default_factory=dict)  # model name -> its Predict reply, else predict_reply
    predicts: list[predict_pb2.PredictRequest] = field(default_factory=list)  # every Predict, as received
    refused_specs: list[model_pb2.ModelSpec] = field(default_factory=list)  # of every Classify and Regress

    async def call(
        self, address: str, method: str, request: bytes, *, timeout_s: float | None, metadata: Metadata
    ) -> UpstreamReply:
        self.calls.append((method, timeout_s))
        if method == GET_MODEL_METADATA:
            self.clock.now_s += self.metadata_takes_s
            return UpstreamReply(_metadata_reply(request, self.signature), ())
        if method == PREDICT:
            predict = predict_pb2.PredictRequest.FromString(request)
            self.predicts.append(predict)
            self.predict_started.set()
            if self.predict_gate is not None:
                await self.predict_gate.wait()
            return UpstreamReply(self.replies.get(predict.model_spec.name, self.predict_reply), ())
        if method == GET_MODEL_STATUS:
            response = get_model_status_pb2.GetModelStatusResponse()
            response.model_version_status.add(version=1, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            return UpstreamReply(response.SerializeToString(), ())
        if method in (CLASSIFY, REGRESS):  # as our entries answer (core.predict_only)
            message = classification_pb2.ClassificationRequest
            if method == REGRESS:
                message = classification_pb2.RegressionRequest
            spec = message.FromString(request).model_spec
            self.refused_specs.append(spec)
            raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: model {spec.name!r} has none")
        raise RpcStatusError(grpc.StatusCode.UNIMPLEMENTED, method)

    async def probe(self, address: str, timeout_s: float) -> bool:
        return True

    async def close_addresses(self, addresses: Sequence[str]) -> None:
        return None


@dataclass
class Served:
    base_url: str
    upstream: FakeUpstream
    metrics: ProxyMetrics
    session: aiohttp.ClientSession
    core: ProxyCore
    gateway: RestGateway
    port: int

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        return await self.send("POST", path, body)

    async def send(self, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
        async with self.session.request(method, self.base_url + path, data=body) as response:
            return response.status, json.loads(await response.read())

    async def raw_post(
        self, path: str, headers: dict[str, str], body: bytes = b"", *, body_after_continue: bytes = b""
    ) -> tuple[list[int], Any]:
        """POSTs as written over a new connection: the head, then ``body`` (which may be short of Content-Length,
        or absent), and ``body_after_continue`` only once "100 Continue" is received. Returns every status line's
        code in order and the final answer. A gateway that waits for bytes never sent fails this at 10 s."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            head = [f"POST /v1/models{path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
            writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
            return await within(_read_answer(reader, writer, body_after_continue), 10.0)
        finally:
            writer.close()
            # Closed before the test stops the gateway: it would wait for a body still unread (aiohttp lingers).
            await writer.wait_closed()

    def requests(self) -> dict[tuple[str, str, str, str], float]:
        """proxy_requests_total by (model, method, protocol, code)."""
        (family,) = (m for m in self.metrics.registry.collect() if m.name == "proxy_requests")
        return {
            (s.labels["model"], s.labels["method"], s.labels["protocol"], s.labels["code"]): s.value
            for s in family.samples
            if s.name == "proxy_requests_total"
        }


async def _read_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body_after_continue: bytes
) -> tuple[list[int], Any]:
    statuses: list[int] = []
    while True:
        status = int((await reader.readline()).split()[1])
        statuses.append(status)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 100:
            return statuses, json.loads(await reader.readexactly(int(headers["content-length"])))
        writer.write(body_after_continue)


@asynccontextmanager
async def _gateway(
    *,
    max_body_bytes: int = 1 << 20,
    models: Sequence[str] | None = ("entry",),
    timeout_s: float = TIMEOUT_S,
    max_in_flight: int = 1024,
    body_budget_bytes: int = 64 << 20,
    decode_threads: int = 2,
) -> AsyncIterator[Served]:
    """``models`` None: the source forwards any name (``--entry_targets`` alone)."""
    clock = FakeClock()
    upstream = FakeUpstream(clock)
    metrics = ProxyMetrics()
    core = ProxyCore(
        source=StaticEndpointSource(["a:1"], models=models),
        router=Router(OutlierPolicy()),
        pool=cast(UpstreamPool, upstream),
        metrics=metrics,
        config=CoreConfig(max_in_flight=max_in_flight),
    )
    config = RestConfig(
        host="127.0.0.1",
        port=0,
        timeout_s=timeout_s,
        max_body_bytes=max_body_bytes,
        body_budget_bytes=body_budget_bytes,
        decode_threads=decode_threads,
    )
    gateway = RestGateway(core, config, clock=clock)
    port = await gateway.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            yield Served(f"http://127.0.0.1:{port}/v1/models", upstream, metrics, session, core, gateway, port)
    finally:
        await gateway.stop()
        await core.stop()


BODY = json.dumps({"inputs": {"x": [1.0]}}).encode()


@_sync
async def test_a_version_must_be_ascii_digits_within_int64() -> None:
    async with _gateway() as served:
        for version in ("\u00b2", "\u0663", str(MAX_VERSION + 1), "9" * 30):
            status, body = await served.post(f"/entry/versions/{version}:predict", BODY)
            assert status == 400 and version in body["error"], (version, body)
        status, body = await served.post(f"/entry/versions/{MAX_VERSION}:predict", BODY)
        assert status == 200 and body == {"outputs": [0.5]}


@_sync
async def test_json_nested_too_deeply_is_a_400_naming_the_problem() -> None:
    async with _gateway() as served:
        # Deeper than the JSON parser goes, and deeper than any tensor's rank here (numpy's 64; parseable).
        for depth, problem in ((100_000, "nested too deeply"), (900, "nested deeper than 64"), (65, "deeper than 64")):
            body = b'{"inputs": {"x": ' + b"[" * depth + b"1.0" + b"]" * depth + b"}}"
            status, answer = await served.post("/entry:predict", body)
            assert status == 400 and problem in answer["error"], (depth, answer)
        assert (await served.post("/entry:predict", BODY))[0] == 200


@_sync
async def test_text_no_utf8_can_hold_and_numbers_too_big_are_400s_naming_them() -> None:
    """Each was a 500 (UnicodeEncodeError, int's 4300-digit limit) or went through as infinity (1e999)."""
    cases = [
        (rb'{"inputs": {"s": ["\ud800"]}}', "input 's': string: '\\ud800' is not valid Unicode"),
        (rb'{"signature_name": "\ud800", "inputs": {"x": [1.0]}}', "\"signature_name\": '\\ud800' is not valid"),
        (rb'{"inputs": {"\ud800": [1.0]}}', "input name: '\\ud800' is not valid Unicode"),
        (rb'{"instances": [{"\udfff": 1.0}]}', "input name: '\\udfff' is not valid Unicode"),
        (b'{"inputs": {"x": [' + b"9" * 5000 + b"]}}", "JSON Parse error: number too big"),
        (b'{"inputs": {"x": [1e999]}}', "JSON Parse error: Number too big to be stored in double"),
        (b'{"inputs": {"x": [1e999, Infinity]}}', "JSON Parse error: Number too big to be stored in double"),
    ]
    async with _gateway() as served:
        for body, message in cases:
            status, answer = await served.post("/entry:predict", body)
            assert status == 400 and message in answer["error"], (body[:60], answer)
        # NaN and Infinity are literals TF Serving accepts; a surrogate pair is one character (U+1F600); 1e30 fits
        # the signature's DT_FLOAT.
        accepted = [
            b'{"inputs": {"x": [NaN, Infinity, -Infinity]}}',
            rb'{"signature_name": "\ud83d\ude00", "inputs": {"x": [1.0]}}',
            b'{"inputs": {"x": [' + b"9" * 30 + b"]}}",
            b'{"inputs": {"x": [1e39]}}',  # infinity in DT_FLOAT, as TF Serving's static_cast makes it
        ]
        for body in accepted:
            status, answer = await served.post("/entry:predict", body)
            assert status == 200, (body[:60], answer)
        assert served.requests()[("entry", "Predict", "rest", "INVALID_ARGUMENT")] == len(cases)


@_sync
async def test_a_body_over_the_limit_is_a_413() -> None:
    async with _gateway(max_body_bytes=1000) as served:
        too_large = json.dumps({"inputs": {"x": [1.0] * 400}}).encode()
        assert len(too_large) > 1000
        status, body = await served.post("/entry:predict", too_large)
        assert status == 413 and "1000 bytes" in body["error"]
        assert (await served.post("/entry:predict", BODY))[0] == 200


@_sync
async def test_metadata_and_predict_share_one_deadline() -> None:
    async with _gateway() as served:
        # The signature lookup uses 40% of the REST timeout: the Predict gets the 60% left, not a fresh timeout.
        served.upstream.metadata_takes_s = 0.4 * TIMEOUT_S
        status, _ = await served.post("/entry:predict", json.dumps({"instances": [1.0]}).encode())
        assert status == 200
        (_, metadata_timeout_s), (_, predict_timeout_s) = served.upstream.calls
        assert metadata_timeout_s is not None and predict_timeout_s is not None
        assert 0.5 * TIMEOUT_S < predict_timeout_s <= 0.6 * TIMEOUT_S + 1e-6
    async with _gateway() as served:
        # The signature lookup uses it all: a 504 without a Predict upstream, counted as DEADLINE_EXCEEDED.
        served.upstream.metadata_takes_s = 1.5 * TIMEOUT_S
        status, body = await served.post("/entry:predict", json.dumps({"instances": [1.0]}).encode())
        assert status == 504 and "deadline" in body["error"]
        assert [method for method, _ in served.upstream.calls] == [GET_MODEL_METADATA]
        labels = {"model": "entry", "method": "Predict", "protocol": "rest", "code": "DEADLINE_EXCEEDED"}
        assert served.metrics.registry.get_sample_value("proxy_requests_total", labels) == 1


@_sync
async def test_classify_and_regress_go_to_an_entry_and_answer_as_it_does() -> None:
    """The entry answers them as tensorflow_model_server does on a model with predict signatures only; the proxy
    passes on the model and version the path names (the body is not read) and the entry's code."""
    async with _gateway() as served:
        for path, method in (("/entry:classify", CLASSIFY), ("/entry/versions/4:regress", REGRESS)):
            status, answer = await served.post(path, BODY)
            assert status == 400 and "has none" in answer["error"], answer
            assert served.upstream.calls[-1][0] == method
        assert [(s.name, s.version.value) for s in served.upstream.refused_specs] == [("entry", 0), ("entry", 4)]
        assert served.requests()[("entry", "Classify", "rest", "INVALID_ARGUMENT")] == 1
        assert served.requests()[("entry", "Regress", "rest", "INVALID_ARGUMENT")] == 1


@_sync
async def test_requests_refused_before_a_core_call_are_counted_once() -> None:
    async with _gateway(max_body_bytes=1000) as served:
        too_large = json.dumps({"inputs": {"x": [1.0] * 400}}).encode()
        refusals = [
            ("POST", "/entry/versions/x:predict", BODY, 400, ("entry", "Predict", "INVALID_ARGUMENT")),
            ("POST", "/entry:predict", b"{not json", 400, ("entry", "Predict", "INVALID_ARGUMENT")),
            ("POST", "/entry:predict", too_large, 413, ("entry", "Predict", "INVALID_ARGUMENT")),
            ("POST", "/entry:frobnicate", BODY, 400, ("entry", "unknown", "INVALID_ARGUMENT")),
            ("GET", "/entry/other/1", b"", 400, ("entry", "GetModelStatus", "INVALID_ARGUMENT")),
            ("GET", "/entry/versions/x/metadata", b"", 400, ("entry", "GetModelMetadata", "INVALID_ARGUMENT")),
            ("PUT", "/entry", b"", 405, ("unknown", "unknown", "INVALID_ARGUMENT")),
            ("GET", "/../../nothing", b"", 404, ("unknown", "unknown", "NOT_FOUND")),  # GET /nothing
        ]
        for method, path, body, status, (model, rpc, code) in refusals:
            before = served.requests().get((model, rpc, "rest", code), 0.0)
            assert (await served.send(method, path, body))[0] == status, (method, path)
            assert served.requests().get((model, rpc, "rest", code), 0.0) == before + 1, (method, path)
        assert sum(served.requests().values()) == len(refusals)
        assert served.upstream.calls == []

        # Refused after its signature lookup (an internal call, not counted): the Predict counts, once.
        status, _ = await served.post("/entry:predict", json.dumps({"instances": [1.0, {"x": 1.0}]}).encode())
        assert status == 400
        assert served.requests()[("entry", "Predict", "rest", "INVALID_ARGUMENT")] == 4
        assert ("entry", "GetModelMetadata", "rest", "OK") not in served.requests()
        # A request the core serves is counted by the core alone.
        assert (await served.post("/entry:predict", BODY))[0] == 200
        assert served.requests()[("entry", "Predict", "rest", "OK")] == 1
        assert sum(served.requests().values()) == len(refusals) + 2


@_sync
async def test_a_predict_with_a_signature_cache_miss_is_counted_once_as_a_predict() -> None:
    async with _gateway() as served:
        # The audit's flood: Predicts for a model nobody serves fail at their signature lookup (NOT_FOUND).
        for _ in range(20):
            assert (await served.post("/nobody:predict", BODY))[0] == 404
        # A Predict whose lookup succeeds (cache miss, then the Predict).
        assert (await served.post("/entry:predict", BODY))[0] == 200
        assert [method for method, _ in served.upstream.calls] == [GET_MODEL_METADATA, PREDICT]
        assert served.requests() == {
            ("unknown", "Predict", "rest", "NOT_FOUND"): 20,
            ("entry", "Predict", "rest", "OK"): 1,
        }
        registry = served.metrics.registry
        latency = {"method": "GetModelMetadata", "protocol": "rest"}
        assert registry.get_sample_value("proxy_request_latency_seconds_count", latency) is None
        # Still upstream work, seen as such: the lookup's attempt is timed upstream.
        assert registry.get_sample_value("proxy_upstream_latency_seconds_count", {"method": "GetModelMetadata"}) == 1


@_sync
async def test_refused_requests_label_made_up_model_names_unknown() -> None:
    for models in (("entry",), None):
        async with _gateway(models=models) as served:
            for index in range(20):
                assert (await served.post(f"/made-up-{index}:predict", b"{not json"))[0] == 400
                assert (await served.post(f"/made-up-{index}/versions/x:predict", BODY))[0] == 400
            if models is None:  # a name becomes a label once an entry answered OK for it
                assert (await served.post("/entry:predict", BODY))[0] == 200
            assert (await served.post("/entry:predict", b"{not json"))[0] == 400
            counts = served.requests()
            assert counts[("unknown", "Predict", "rest", "INVALID_ARGUMENT")] == 40, models
            assert counts[("entry", "Predict", "rest", "INVALID_ARGUMENT")] == 1, models
            assert {model for model, *_ in counts} == {"entry", "unknown"}, models


class _GatedDecode:
    """Stands in for ``parse_predict_body``: a body of ``min_bytes`` or more waits until ``release`` before it is
    parsed (the real function), so a test controls how long decoding lasts without timing anything. Blocking on
    the event loop's thread would stall the loop itself, which is what the tests below tell apart."""

    def __init__(self, min_bytes: int = 1 << 20, wait_s: float = 10.0) -> None:
        self.min_bytes = min_bytes
        self.wait_s = wait_s
        self.started = threading.Event()
        self.release = threading.Event()
        self.released_in_time: list[bool] = []  # one per gated body: False if the wait ran out
        self.done = threading.Event()  # a gated body was parsed (or failed to be)

    def __call__(self, body: bytes, **options: bool) -> PredictBody:
        if len(body) < self.min_bytes:
            return parse_predict_body(body, **options)
        self.started.set()
        try:
            self.released_in_time.append(self.release.wait(self.wait_s))
            return parse_predict_body(body, **options)
        finally:
            self.done.set()


# 3M numbers, 6 MB: decoding took ~4 s on the event loop before the decoder ran on threads.
BIG_BODY = b'{"inputs": {"x": [' + b",".join([b"1"] * 3_000_000) + b"]}}"


@_sync
async def test_a_large_body_is_decoded_while_the_gateway_serves_other_requests() -> None:
    gate = _GatedDecode()
    with mock.patch.object(rest_gateway, "parse_predict_body", gate):
        async with _gateway(max_body_bytes=64 << 20) as served:
            big = asyncio.create_task(served.post("/entry:predict", BIG_BODY))
            assert await asyncio.to_thread(gate.started.wait, 30), "the large body was never decoded"
            # Decoding the large body is held open: a small request must be served meanwhile. Had the decode run
            # on the event loop, the loop would sit in the gate's wait and nothing would be served until it ran out.
            status, answer = await served.post("/entry:predict", BODY)
            assert status == 200 and answer == {"outputs": [0.5]}
            assert not big.done()
            gate.release.set()
            status, answer = await big
            assert status == 200 and answer == {"outputs": [0.5]}, answer
    assert gate.released_in_time == [True]


@_sync
async def test_a_deadline_that_passes_while_the_body_is_decoded_is_a_504() -> None:
    gate = _GatedDecode()
    with mock.patch.object(rest_gateway, "parse_predict_body", gate):
        async with _gateway(max_body_bytes=64 << 20, timeout_s=1.0) as served:
            try:
                status, answer = await served.post("/entry:predict", BIG_BODY)
            finally:
                gate.release.set()  # the decode thread cannot be stopped: let it finish
            assert status == 504 and "deadline passed while decoding" in answer["error"], answer
            assert gate.started.is_set()
            labels = {"model": "entry", "method": "Predict", "protocol": "rest", "code": "DEADLINE_EXCEEDED"}
            assert served.metrics.registry.get_sample_value("proxy_requests_total", labels) == 1
            assert served.upstream.calls == []
    # Answered while the decode was held: on the event loop it would have held the loop, and the answer, too.
    assert await asyncio.to_thread(gate.done.wait, 30)
    assert gate.released_in_time == [True]


# ---- backpressure before the body ------------------------------------------------------------------------------
# ~100 KB of numbers: decoded on a thread (over decode_offload_bytes) and gated there by _GatedDecode(min_bytes=64K).
MID_BODY = b'{"inputs": {"x": [' + b",".join([b"1"] * 50_000) + b"]}}"


def _grpc_predict(served: Served) -> asyncio.Task[Any]:
    """A gRPC Predict through the same core, as the gRPC servicer makes it (it takes its own admission slot)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "entry"
    ctx = CallContext(request_id="grpc-1", timeout_s=None, protocol="grpc")
    return asyncio.create_task(served.core.call(PREDICT, request.SerializeToString(), ctx))


def _rejected(served: Served, reason: str) -> float:
    return served.metrics.registry.get_sample_value("proxy_rejected_requests_total", {"reason": reason}) or 0.0


def _timed(served: Served, method: str) -> float:
    """proxy_request_latency_seconds observations of REST requests of ``method``."""
    labels = {"method": method, "protocol": "rest"}
    return served.metrics.registry.get_sample_value("proxy_request_latency_seconds_count", labels) or 0.0


async def _until(condition: Callable[[], bool]) -> None:
    """Waits (bounded) for ``condition``, set by the gateway's event loop or a decode thread's hand-back to it."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


@_sync
async def test_a_full_proxy_refuses_a_rest_predict_before_its_body_is_sent() -> None:
    """The answer comes though the client sent only the head: the body was never waited for, let alone decoded."""
    async with _gateway(max_in_flight=1) as served:
        served.upstream.predict_gate = asyncio.Event()
        held = _grpc_predict(served)  # holds the one slot, upstream
        await served.upstream.predict_started.wait()
        statuses, answer = await served.raw_post("/entry:predict", {"Content-Length": str(len(BODY))})
        assert statuses == [429] and "1 requests in flight (max 1)" in answer["error"], (statuses, answer)
        assert served.requests()[("entry", "Predict", "rest", "RESOURCE_EXHAUSTED")] == 1
        assert _rejected(served, "in_flight") == 1
        served.upstream.predict_gate.set()
        await held
        # One request, one slot: its signature lookup and its Predict take none of their own, so with a single slot
        # a REST Predict is served.
        served.upstream.predict_gate = asyncio.Event()
        served.upstream.predict_started.clear()
        rest = asyncio.create_task(served.post("/entry:predict", json.dumps({"instances": [1.0]}).encode()))
        upstream = asyncio.create_task(served.upstream.predict_started.wait())
        await asyncio.wait((rest, upstream), return_when=asyncio.FIRST_COMPLETED)
        assert not rest.done(), f"answered before its Predict went upstream: {rest.result()}"
        assert served.core.admission.in_flight == 1
        served.upstream.predict_gate.set()
        assert await rest == (200, {"predictions": [0.5]})
        assert served.core.admission.in_flight == 0
        # Draining: 503, again without the body.
        assert await served.core.admission.drain(0.0)
        statuses, answer = await served.raw_post("/entry:predict", {"Content-Length": str(len(BODY))})
        assert statuses == [503] and "shutting down" in answer["error"], (statuses, answer)


@_sync
async def test_a_rest_predict_holds_its_slot_while_its_body_is_decoded() -> None:
    gate = _GatedDecode(min_bytes=64 << 10)
    with mock.patch.object(rest_gateway, "parse_predict_body", gate):
        async with _gateway(max_in_flight=1) as served:
            rest = asyncio.create_task(served.post("/entry:predict", MID_BODY))
            assert await asyncio.to_thread(gate.started.wait, 30), "the body was never decoded"
            assert served.core.admission.in_flight == 1
            with pytest.raises(ResourceExhaustedError):
                await _grpc_predict(served)
            gate.release.set()
            status, answer = await rest
            assert status == 200 and answer == {"outputs": [0.5]}, answer
            assert served.core.admission.in_flight == 0


@_sync
async def test_a_body_over_the_limit_is_refused_from_its_declared_length_unread() -> None:
    async with _gateway(max_body_bytes=1000) as served:
        statuses, answer = await served.raw_post("/entry:predict", {"Content-Length": "5000"})
        assert statuses == [413] and "1000 bytes" in answer["error"], (statuses, answer)
        assert served.requests()[("entry", "Predict", "rest", "INVALID_ARGUMENT")] == 1


@_sync
async def test_the_byte_budget_refuses_a_body_it_cannot_take_before_reading_it() -> None:
    gate = _GatedDecode(min_bytes=64 << 10)
    budget = 160 << 10  # room for MID_BODY (~100 KB) and small bodies, not for a second MID_BODY
    with mock.patch.object(rest_gateway, "parse_predict_body", gate):
        async with _gateway(max_body_bytes=budget, body_budget_bytes=budget) as served:
            first = asyncio.create_task(served.post("/entry:predict", MID_BODY))
            assert await asyncio.to_thread(gate.started.wait, 30), "the body was never decoded"
            assert served.gateway.body_bytes_held == len(MID_BODY)
            # Declared: refused from its Content-Length, before a byte of it is sent.
            statuses, answer = await served.raw_post("/entry:predict", {"Content-Length": str(len(MID_BODY))})
            assert statuses == [429] and "no room for" in answer["error"], (statuses, answer)
            # Chunked (no length declared): taken from the budget as it arrives, refused once it does not fit.

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(MID_BODY), 8 << 10):
                    yield MID_BODY[start : start + (8 << 10)]

            async with served.session.post(served.base_url + "/entry:predict", data=chunks()) as response:
                assert response.status == 429, await response.text()
            assert _rejected(served, "body_bytes") == 2
            assert served.requests()[("entry", "Predict", "rest", "RESOURCE_EXHAUSTED")] == 2
            # A body that fits is served beside the one held.
            assert await served.post("/entry:predict", BODY) == (200, {"outputs": [0.5]})
            gate.release.set()
            assert await first == (200, {"outputs": [0.5]})
            assert served.gateway.body_bytes_held == 0
            assert gate.released_in_time == [True]


@_sync
async def test_expect_continue_is_answered_only_once_the_request_is_admitted() -> None:
    async with _gateway(max_in_flight=1) as served:
        head = {"Content-Length": str(len(BODY)), "Expect": "100-continue"}
        statuses, answer = await served.raw_post("/entry:predict", head, body_after_continue=BODY)
        assert statuses == [100, 200] and answer == {"outputs": [0.5]}, (statuses, answer)
        served.upstream.predict_gate = asyncio.Event()
        held = _grpc_predict(served)
        await served.upstream.predict_started.wait()
        # Refused: no "100 Continue", so the client never sends its body.
        statuses, answer = await served.raw_post("/entry:predict", head, body_after_continue=BODY)
        assert statuses == [429], (statuses, answer)
        served.upstream.predict_gate.set()
        await held


class _CountingExecutor(ThreadPoolExecutor):
    """The gateway's decode pool, counting the steps handed to it and not yet ended (queued or running)."""

    outstanding = 0
    most_outstanding = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        cls = _CountingExecutor
        cls.outstanding += 1  # on the event loop's thread; ended on a worker's, under the GIL
        cls.most_outstanding = max(cls.most_outstanding, cls.outstanding)
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(lambda _: setattr(cls, "outstanding", cls.outstanding - 1))
        return future


@_sync
async def test_decode_steps_never_queue_and_a_cut_short_decode_keeps_its_bytes_until_it_ends() -> None:
    gate = _GatedDecode(min_bytes=64 << 10)
    with (
        mock.patch.object(rest_gateway, "parse_predict_body", gate),
        mock.patch.object(rest_gateway, "ThreadPoolExecutor", _CountingExecutor),
    ):
        async with _gateway(timeout_s=1.0, decode_threads=1) as served:
            first = asyncio.create_task(served.post("/entry:predict", MID_BODY))
            assert await asyncio.to_thread(gate.started.wait, 30), "the body was never decoded"
            # The one decode thread is busy: these wait for it outside the pool, and their deadlines pass there.
            waiting = [asyncio.create_task(served.post("/entry:predict", MID_BODY)) for _ in range(3)]
            answers = await asyncio.gather(*waiting)
            assert _CountingExecutor.most_outstanding == 1
            for status, answer in answers:
                assert status == 504 and "waited for a codec thread" in answer["error"], answer
            status, answer = await first
            assert status == 504 and "deadline passed while decoding" in answer["error"], answer
            # Answered, but its decode runs on: its bytes stay taken until it ends.
            assert served.gateway.body_bytes_held == len(MID_BODY)
            gate.release.set()
            await _until(lambda: served.gateway.body_bytes_held == 0)
            assert await served.post("/entry:predict", BODY) == (200, {"outputs": [0.5]})
    assert gate.released_in_time == [True]


class _GatedConversion:
    """Stands in for ``rest_codec.json_to_tensor``: counts the inputs converted, and holds the first until
    ``release`` (bounded), so a request's deadline passes while its body is converted."""

    def __init__(self) -> None:
        self.converted: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.convert = rest_codec.json_to_tensor

    def __call__(self, value: Any, name: str, datatype: int | None, *cancel: DecodeCancel | None) -> Any:
        self.converted.append(name)
        if len(self.converted) == 1:
            self.started.set()
            self.release.wait(30)
        return self.convert(value, name, datatype, *cancel)


# 2000 instances of 10 named inputs: decoded on a thread, converted into 10 tensors one after the other.
COLUMNS_BODY = json.dumps({"instances": [{f"c{k}": [i, k] for k in range(10)} for i in range(2000)]}).encode()


@_sync
async def test_a_decode_cut_short_by_its_deadline_stops_and_gives_back_its_bytes() -> None:
    gate = _GatedConversion()
    with mock.patch.object(rest_codec, "json_to_tensor", gate):
        async with _gateway(timeout_s=1.0, decode_threads=1) as served:
            try:
                status, answer = await served.post("/entry:predict", COLUMNS_BODY)
                assert status == 504 and "deadline passed while decoding" in answer["error"], answer
                assert gate.started.is_set()
            finally:
                gate.release.set()
            # The step stops at its next check instead of converting the 9 inputs left for nobody, and gives back
            # its thread and its bytes: a request that fits is served by the one decode thread.
            await _until(lambda: served.gateway.body_bytes_held == 0)
            assert len(gate.converted) == 1, gate.converted
            assert await served.post("/entry:predict", MID_BODY) == (200, {"outputs": [0.5]})
            # The cut-short request never went upstream: the one Predict is the second request's.
            assert [method for method, _ in served.upstream.calls] == [GET_MODEL_METADATA, PREDICT]


# ---- large answers are written off the event loop ---------------------------------------------------------------


def _scores_reply(count: int) -> bytes:
    """A Predict reply of ``count`` DT_FLOAT scores, shape [count, 1]."""
    response = predict_pb2.PredictResponse()
    response.outputs["y"].CopyFrom(to_tensor_proto(np.full((count, 1), 0.25, np.float32)))
    return response.SerializeToString()


LARGE_ANSWER = 5000  # elements: over RestConfig.encode_offload_elements (1024)


class _GatedWrite:
    """Stands in for ``rest_gateway.predict_response_text``: records the thread every answer is written on, and
    holds an answer of ``min_elements`` or more until ``release`` (bounded) before writing it (the real function),
    so a test holds a write open without timing anything. Holding it on the event loop's thread would stall the
    loop, which is what the tests below tell apart."""

    def __init__(self, min_elements: int = LARGE_ANSWER, wait_s: float = 10.0) -> None:
        self.min_elements = min_elements
        self.wait_s = wait_s
        self.started = threading.Event()
        self.release = threading.Event()
        self.released_in_time: list[bool] = []  # one per gated answer: False if the wait ran out
        self.on_loop: list[tuple[int, bool]] = []  # (elements, written on the event loop's thread) per answer
        self.outcomes: list[str] = []  # per gated answer: "written" or "cancelled"
        self.done = threading.Event()  # a gated answer was written (or stopped)

    def __call__(self, response: predict_pb2.PredictResponse, row_format: bool, *cancel: DecodeCancel) -> str:
        elements = sum(from_tensor_proto(tensor).size for tensor in response.outputs.values())
        self.on_loop.append((elements, threading.current_thread() is threading.main_thread()))
        if elements < self.min_elements:
            return predict_response_text(response, row_format, *cancel)
        self.started.set()
        try:
            self.released_in_time.append(self.release.wait(self.wait_s))
            text = predict_response_text(response, row_format, *cancel)
            self.outcomes.append("written")
            return text
        except DecodeCancelled:
            self.outcomes.append("cancelled")
            raise
        finally:
            self.done.set()


@_sync
async def test_a_large_answer_is_written_while_the_gateway_serves_other_requests() -> None:
    gate = _GatedWrite()
    with mock.patch.object(rest_gateway, "predict_response_text", gate):
        async with _gateway(models=None) as served:
            served.upstream.replies["big"] = _scores_reply(LARGE_ANSWER)
            big = asyncio.create_task(served.post("/big:predict", BODY))
            assert await asyncio.to_thread(gate.started.wait, 30), "the large answer was never written"
            # Its answer is held being written: a small REST Predict, a gRPC call through the proxy and a status
            # are served meanwhile. Written on the event loop, the loop would sit in the gate's wait, and nothing
            # would be served until it ran out.
            assert await served.post("/entry:predict", BODY) == (200, {"outputs": [0.5]})
            reply = await _grpc_predict(served)
            assert predict_pb2.PredictResponse.FromString(reply.response).outputs["y"].float_val == [0.5]
            status, answer = await served.send("GET", "/entry")
            assert status == 200 and answer["model_version_status"][0]["state"] == "AVAILABLE", answer
            assert not big.done()
            gate.release.set()
            status, answer = await big
            assert status == 200 and answer == {"outputs": [[0.25]] * LARGE_ANSWER}, status
            # The small answer was written on the loop (a thread hop costs more than writing it), the large one not.
            assert gate.on_loop == [(LARGE_ANSWER, False), (1, True)], gate.on_loop
            assert served.gateway.body_bytes_held == 0
    assert gate.released_in_time == [True]


@_sync
async def test_a_deadline_that_passes_while_the_answer_is_written_is_a_504() -> None:
    gate = _GatedWrite()
    with mock.patch.object(rest_gateway, "predict_response_text", gate):
        async with _gateway(timeout_s=1.0) as served:
            served.upstream.predict_reply = _scores_reply(LARGE_ANSWER)
            try:
                status, answer = await served.post("/entry:predict", BODY)
                assert status == 504 and "deadline passed while writing the 5000-element answer" in answer["error"]
                assert gate.started.is_set()
                # The entry answered OK, the client got a 504: counted as that, once, and timed once.
                assert served.requests() == {("entry", "Predict", "rest", "DEADLINE_EXCEEDED"): 1}
                assert _timed(served, "Predict") == 1
                # Answered, but its write runs on until its next cancel check: its bytes stay taken until then.
                assert served.gateway.body_bytes_held > 0
            finally:
                gate.release.set()
            # Told to stop, the write stops at its first check instead of writing for nobody; its bytes come back.
            assert await asyncio.to_thread(gate.done.wait, 30)
            await _until(lambda: served.gateway.body_bytes_held == 0)
            assert gate.outcomes == ["cancelled"]
            assert [method for method, _ in served.upstream.calls] == [GET_MODEL_METADATA, PREDICT]
            # The codec thread is free again: the next large answer is written.
            gate.release.set()
            status, answer = await served.post("/entry:predict", BODY)
            assert status == 200 and len(answer["outputs"]) == LARGE_ANSWER
            assert served.requests() == {
                ("entry", "Predict", "rest", "DEADLINE_EXCEEDED"): 1,
                ("entry", "Predict", "rest", "OK"): 1,
            }
            assert _timed(served, "Predict") == 2
    assert gate.released_in_time == [True, True]


@_sync
async def test_a_large_answer_takes_its_share_of_the_byte_budget() -> None:
    gate = _GatedWrite()
    share = len(_scores_reply(LARGE_ANSWER)) + 8 * LARGE_ANSWER  # rest_codec.AnswerSize.budget_bytes
    with mock.patch.object(rest_gateway, "predict_response_text", gate):
        # Room for one large answer, not two.
        async with _gateway(models=None, max_body_bytes=share, body_budget_bytes=share + 1000) as served:
            served.upstream.replies["big"] = _scores_reply(LARGE_ANSWER)
            first = asyncio.create_task(served.post("/big:predict", BODY))
            assert await asyncio.to_thread(gate.started.wait, 30), "the large answer was never written"
            # The request's body bytes grew to its answer's share, held while it is written.
            assert served.gateway.body_bytes_held == share
            status, answer = await served.post("/big:predict", BODY)
            assert status == 429 and f"no room for {share - len(BODY)} more" in answer["error"], answer
            assert _rejected(served, "body_bytes") == 1
            # The entry answered it OK, the client got a 429: counted as that, once (the first is still in flight).
            assert served.requests() == {("big", "Predict", "rest", "RESOURCE_EXHAUSTED"): 1}
            # A small answer takes no share (written on the loop, one at a time): served beside the large one.
            assert await served.post("/entry:predict", BODY) == (200, {"outputs": [0.5]})
            gate.release.set()
            status, _ = await first
            assert status == 200
            assert served.gateway.body_bytes_held == 0
            assert served.requests() == {
                ("big", "Predict", "rest", "RESOURCE_EXHAUSTED"): 1,
                ("entry", "Predict", "rest", "OK"): 1,
                ("big", "Predict", "rest", "OK"): 1,
            }
            assert _timed(served, "Predict") == 3
    assert gate.released_in_time == [True]


@_sync
async def test_an_answer_whose_share_exceeds_the_whole_budget_is_written_alone() -> None:
    """The upstream Predict already ran: a 429 no retry could ever pass would only have it run again. The answer
    takes the whole budget instead, and is refused only while other work holds some of it."""
    gate = _GatedWrite()
    budget = 1000  # far less than the answer's share: ~5000 elements' worth
    with mock.patch.object(rest_gateway, "predict_response_text", gate):
        async with _gateway(max_body_bytes=budget, body_budget_bytes=budget) as served:
            served.upstream.predict_reply = _scores_reply(LARGE_ANSWER)
            first = asyncio.create_task(served.post("/entry:predict", BODY))
            assert await asyncio.to_thread(gate.started.wait, 30), "the large answer was never written"
            assert served.gateway.body_bytes_held == budget
            # No room right now: 429, which a retry once the answer is written passes.
            status, answer = await served.post("/entry:predict", BODY)
            assert status == 429 and "no room for" in answer["error"], answer
            gate.release.set()
            status, answer = await first
            assert status == 200 and answer == {"outputs": [[0.25]] * LARGE_ANSWER}, status
            assert served.gateway.body_bytes_held == 0
            status, answer = await served.post("/entry:predict", BODY)
            assert status == 200 and len(answer["outputs"]) == LARGE_ANSWER, status
            assert served.gateway.body_bytes_held == 0
            assert served.requests() == {
                ("entry", "Predict", "rest", "OK"): 2,
                ("entry", "Predict", "rest", "RESOURCE_EXHAUSTED"): 1,
            }
    assert gate.released_in_time == [True, True]


def _empty_reply(*sizes: int) -> bytes:
    """A Predict reply whose one DT_FLOAT output "y" has shape ``sizes`` and no values."""
    response = predict_pb2.PredictResponse()
    tensor = response.outputs["y"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in sizes:
        tensor.tensor_shape.dim.add().size = size
    return response.SerializeToString()


@_sync
async def test_an_output_with_a_zero_dimension_is_written_as_its_empty_lists_or_refused_when_absurd() -> None:
    """A 22-byte output of shape [2**40, 0] decodes to no values, yet would be written as 2**40 "[]": it is refused
    before a row is written (it was written on a codec thread, ~2 us and ~70 bytes per row, until its deadline)."""
    async with _gateway(models=None, timeout_s=1.0) as served:
        served.upstream.replies["empty"] = _empty_reply(3, 0)
        served.upstream.replies["absurd"] = _empty_reply(1 << 40, 0)
        assert await served.post("/empty:predict", BODY) == (200, {"outputs": [[], [], []]})
        assert await served.post("/empty:predict", b'{"instances": [1.0]}') == (200, {"predictions": [[], [], []]})
        status, answer = await served.post("/absurd:predict", BODY)
        assert status == 400 and "output 'y': shape [1099511627776, 0] holds no values" in answer["error"], answer
        assert served.gateway.body_bytes_held == 0
        assert served.requests() == {
            ("empty", "Predict", "rest", "OK"): 2,
            ("absurd", "Predict", "rest", "INVALID_ARGUMENT"): 1,
        }


@pytest.mark.parametrize("pool_dropped", [True, False])
def test_a_write_still_waiting_for_a_codec_thread_when_the_proxy_stops_is_a_503(pool_dropped: bool) -> None:
    asyncio.run(_stop_under_a_waiting_write(pool_dropped))


async def _stop_under_a_waiting_write(pool_dropped: bool) -> None:
    gate = _GatedWrite()
    share = len(_scores_reply(LARGE_ANSWER)) + 8 * LARGE_ANSWER  # rest_codec.AnswerSize.budget_bytes
    with mock.patch.object(rest_gateway, "predict_response_text", gate):
        async with _gateway(decode_threads=1) as served:
            served.upstream.predict_reply = _scores_reply(LARGE_ANSWER)
            first = asyncio.create_task(served.post("/entry:predict", BODY))
            assert await asyncio.to_thread(gate.started.wait, 30), "the large answer was never written"
            second = asyncio.create_task(served.post("/entry:predict", BODY))
            # Holding its answer's share, the second waits for the one codec thread, which the first holds.
            await _until(lambda: served.gateway.body_bytes_held == 2 * share)
            # What stop() does to the pool once its drain timeout has passed (its aiohttp cleanup would wait for
            # these handlers that long first): shuts it down, and drops it (or not yet).
            gateway = served.gateway
            pool = gateway._codec_pool
            assert pool is not None
            if pool_dropped:
                gateway._codec_pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            gate.release.set()
            assert await first == (200, {"outputs": [[0.25]] * LARGE_ANSWER})
            status, answer = await second
            assert status == 503 and "proxy stopping" in answer["error"], answer
            await _until(lambda: gateway.body_bytes_held == 0)
            assert served.requests() == {
                ("entry", "Predict", "rest", "OK"): 1,
                ("entry", "Predict", "rest", "UNAVAILABLE"): 1,
            }
    assert gate.released_in_time == [True]


def _complex_reply() -> bytes:
    """A Predict reply whose one output is DT_COMPLEX64, which has no JSON form (TF Serving refuses it too)."""
    response = predict_pb2.PredictResponse()
    response.outputs["y"].CopyFrom(to_tensor_proto(np.array([1 + 2j], np.complex64)))
    return response.SerializeToString()


@_sync
async def test_a_request_is_counted_once_with_the_code_its_client_got() -> None:
    """The core counts a core call when it returns; the gateway still writes the answer after that. An answer the
    entry gave OK that the gateway cannot write (400 here; 504 and 429 in the tests above) is counted as the error
    the client got, not OK, and every request, gRPC's and the signature lookup's too, is counted as before."""
    async with _gateway() as served:
        served.upstream.predict_reply = _complex_reply()
        status, answer = await served.post("/entry:predict", BODY)
        assert status == 400 and "DT_COMPLEX64 tensors have no JSON form" in answer["error"], answer
        assert served.requests() == {("entry", "Predict", "rest", "INVALID_ARGUMENT"): 1}
        assert _timed(served, "Predict") == 1
        served.upstream.predict_reply = _predict_reply()
        assert await served.post("/entry:predict", BODY) == (200, {"outputs": [0.5]})
        assert (await served.send("GET", "/entry"))[0] == 200
        assert (await served.send("GET", "/entry/metadata"))[0] == 200
        await _grpc_predict(served)
        assert served.requests() == {
            ("entry", "Predict", "rest", "INVALID_ARGUMENT"): 1,
            ("entry", "Predict", "rest", "OK"): 1,
            ("entry", "GetModelStatus", "rest", "OK"): 1,
            ("entry", "GetModelMetadata", "rest", "OK"): 1,
            ("entry", "Predict", "grpc", "OK"): 1,
        }
        assert [_timed(served, method) for method in ("Predict", "GetModelStatus", "GetModelMetadata")] == [2, 1, 1]
        # The signature lookup (one, cached for the second Predict) was upstream work, not a request.
        calls = [method for method, _ in served.upstream.calls]
        assert calls.count(GET_MODEL_METADATA) == 2  # the lookup, then the client's own GET .../metadata


# ---- TF Serving's REST API as its clients use it (tensorflow_serving/model_servers/http_rest_api_handler.cc,
# http_rest_api_util.cc and util/json_tensor.cc) ---------------------------------------------------------------------


async def _exchange(served: Served, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], str]:
    """One request with ``path`` sent exactly as written (no normalizing, no re-escaping): status, headers, text."""
    url = yarl.URL(f"http://127.0.0.1:{served.port}{path}", encoded=True)
    async with served.session.request(method, url, data=body) as response:
        return response.status, dict(response.headers), await response.text()


def _tokens(text: str) -> Any:
    """A JSON answer with every float and NaN/Infinity literal kept as the text the server wrote."""
    return json.loads(text, parse_float=str, parse_constant=str)


@_sync
async def test_paths_are_read_as_tf_serving_reads_them() -> None:
    async with _gateway(models=None) as served:
        # Under /v1/, a path that is no API call is a 400 naming it, as TF Serving answers; elsewhere a 404.
        for method, path, message in [
            ("GET", "/v1/models", "Missing model name"),
            ("GET", "/v1/models/", "Malformed request: GET /v1/models/"),
            ("GET", "/v1/foo", "Malformed request: GET /v1/foo"),
            ("POST", "/v1/foo", "Malformed request: POST /v1/foo"),
            ("POST", "/v1/models", "Malformed request: POST /v1/models"),
            ("GET", "/v1/models//versions/1", "Malformed request: GET /v1/models//versions/1"),
        ]:
            status, _, text = await _exchange(served, method, path)
            assert status == 400 and message in json.loads(text)["error"], (method, path, text)
        assert (await _exchange(served, "GET", "/v2/models/entry"))[0] == 404
        # Its fixed words are case-insensitive; a name or label is percent-decoded (what a client escapes).
        status, _, text = await _exchange(served, "POST", "/V1/Models/entry/VERSIONS/3:predict", BODY)
        assert status == 200, text
        status, _, text = await _exchange(served, "POST", "/v1/models/a%2Fb%3Ac/Labels/can%20ary:predict", BODY)
        assert status == 200, text
        first, second = served.upstream.predicts
        assert first.model_spec.name == "entry" and first.model_spec.version.value == 3
        assert second.model_spec.name == "a/b:c" and second.model_spec.version_label == "can ary"
        status, _, text = await _exchange(served, "GET", "/V1/MODELS/entry/Versions/2")
        assert status == 200 and json.loads(text)["model_version_status"][0]["state"] == "AVAILABLE", text
        # Neither GET nor POST: a 405 that names the methods the path takes (TF Serving: a 400).
        status, headers, _ = await _exchange(served, "PUT", "/v1/models/entry")
        assert status == 405 and headers.get("Allow") == "GET, POST", (status, headers)


@_sync
async def test_predict_bodies_are_read_as_tf_serving_reads_them() -> None:
    async with _gateway() as served:
        # An empty signature_name is the default signature: unnamed instances take its one input.
        status, _, text = await _exchange(
            served, "POST", "/v1/models/entry:predict", b'{"signature_name": "", "instances": [1.0, 2.5]}'
        )
        assert status == 200, text
        (request,) = served.upstream.predicts
        assert from_tensor_proto(request.inputs["x"]).tolist() == [1.0, 2.5]
        # Content after the document is not read (RapidJSON's kParseStopWhenDoneFlag).
        status, _, text = await _exchange(served, "POST", "/v1/models/entry:predict", BODY + b'\n{"x": trailing')
        assert status == 200, text

        served.upstream.signature = {"s": types_pb2.DT_STRING, "n": types_pb2.DT_INT64, "b": types_pb2.DT_BOOL}
        path = "/v1/models/entry/versions/2:predict"  # another signature-cache key: the new signature is read
        status, _, text = await _exchange(served, "POST", path, b'{"inputs": {"s": [{"b64": "YQ"}, {"b64": "YWI"}]}}')
        assert status == 200, text  # base64 without its padding, as absl::Base64Unescape takes it
        assert from_tensor_proto(served.upstream.predicts[-1].inputs["s"]).tolist() == [b"a", b"ab"]
        refused = [
            (b'{"inputs": {"n": [1, 2.5]}}', "input 'n': 2.5 is not an integer (DT_INT64)"),
            (b'{"inputs": {"n": [1.0]}}', "input 'n': 1.0 is not an integer (DT_INT64)"),
            (b'{"inputs": {"b": [true, 1]}}', "input 'b': DT_BOOL needs true or false, got 1"),
            (b'{"inputs": {"s": [{"b64": "YQ="}]}}', "input 's': \"b64\" value is not valid base64"),
            (b"", "JSON Parse error: The document is empty"),
        ]
        for body, message in refused:
            status, _, text = await _exchange(served, "POST", path, body)
            assert status == 400 and message in json.loads(text)["error"], (body, text)
        assert len(served.upstream.predicts) == 3  # none of them went upstream
        assert (await served.post("/entry:predict", BODY))[0] == 200  # and the proxy serves on


@_sync
async def test_predict_answers_are_written_as_tf_serving_writes_them() -> None:
    response = predict_pb2.PredictResponse()
    floats = [0.1, 1 / 3, 1.0, 1e6, 1e-5, 100000.0, 3.4e38, float("nan"), float("inf"), float("-inf")]
    outputs = {
        "f": np.array(floats, np.float32),
        "d": np.array([0.1, 1 / 3, 2.0]),
        "i": np.array([2**53 + 1, -5], np.int64),
        "raw_bytes": np.array([b"\xff", b"ab"], dtype=object),
        "t": np.array([b"ok", b"\xff"], dtype=object),
        "ok": np.array([True, False]),
    }
    for name, array in outputs.items():
        response.outputs[name].CopyFrom(to_tensor_proto(array))
    async with _gateway() as served:
        served.upstream.predict_reply = response.SerializeToString()
        status, _, text = await _exchange(served, "POST", "/v1/models/entry:predict", BODY)
        assert status == 200, text
        # Floats with 6 significant digits when that reads back as the same value, else 9 (float) or 17 (double);
        # ".0" on whole numbers without an exponent; NaN and Infinity bare; int64 as exact numbers.
        assert _tokens(text) == {
            "outputs": {
                "f": [
                    "0.1",
                    "0.333333343",
                    "1.0",
                    "1e+06",
                    "1e-05",
                    "100000.0",
                    "3.4e+38",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                ],
                "d": ["0.1", "0.33333333333333331", "2.0"],
                "i": [2**53 + 1, -5],
                "raw_bytes": [{"b64": "/w=="}, {"b64": "YWI="}],
                "t": ["ok", {"b64": "/w=="}],
                "ok": [True, False],
            }
        }
        one = predict_pb2.PredictResponse()
        one.outputs["scores"].CopyFrom(to_tensor_proto(np.array([[0.25], [0.7310586]], np.float32)))
        served.upstream.predict_reply = one.SerializeToString()
        status, headers, text = await _exchange(
            served, "POST", "/v1/models/entry:predict", b'{"instances": [1.0, 2.0]}'
        )
        assert status == 200 and _tokens(text) == {"predictions": [["0.25"], ["0.731058598"]]}, text
        # TF Serving's header exactly, without a charset parameter: answers and errors alike.
        assert headers["Content-Type"] == "application/json"
        status, headers, _ = await _exchange(served, "POST", "/v1/models/entry:predict", b"{}")
        assert (status, headers["Content-Type"]) == (400, "application/json")


@_sync
async def test_metadata_is_printed_as_tf_serving_prints_it() -> None:
    async with _gateway() as served:
        status, headers, text = await _exchange(served, "GET", "/v1/models/entry/versions/4/metadata")
        assert status == 200 and headers["Content-Type"] == "application/json", (status, headers)
        document = json.loads(text)
        # Every field without presence is printed, empty ones included (JsonPrintOptions
        # always_print_fields_with_no_presence), names as in the .proto.
        assert document["model_spec"] == {"name": "entry", "signature_name": "", "version": "4"}
        signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["outputs"]["y"] == {
            "name": "y:0",
            "dtype": "DT_FLOAT",
            "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False},
        }
        assert signature["method_name"] == "tensorflow/serving/predict" and "defaults" not in signature
