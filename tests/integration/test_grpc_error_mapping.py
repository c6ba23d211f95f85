"""The shared gRPC server's error mapping, over real sockets: a request body that does not parse as the method's
message, and a handler that is still working when its call ends (deadline passed, already aborted)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from monolith_serving.core.errors import DeadlineExceededError
from monolith_serving.core.grpc_server import GrpcServer, GrpcServerOptions, build_server
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from monolith_serving.ps.servicer import add_prediction_servicer

pytestmark = pytest.mark.integration

PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"

GARBAGE = b"\xff\xff\xff"
# Field 1 (a ModelSpec whose field 1 is its name; HealthCheckRequest's service name) holding bytes that are not UTF-8.
BAD_UTF8 = b"\x0a\x04\x0a\x02\xff\xfe"

DEADLINE_S = 0.3
# How long the late handlers work past the deadline.
LATE_S = 0.2


class Predictions(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    """Predict answers with the request's model name; a name starting with ``late-`` makes the call outlive its
    deadline, then end as the rest of the name says. ``ended`` is set once grpc is through with a call (its own
    logging included)."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        context.add_done_callback(lambda _context: self.ended.set())
        name = request.model_spec.name
        if name.startswith("late-busy-"):
            # Busy past the deadline without yielding: the handler ends before grpc has noticed the cancellation.
            time.sleep((context.time_remaining() or 0) + LATE_S)
        elif name.startswith("late-"):
            # Work that outlives grpc's cancellation at the deadline (as a coalesced Predict's waiter does, which
            # fails with the deadline at about the time grpc cancels the call).
            with suppress(asyncio.CancelledError):
                await asyncio.sleep((context.time_remaining() or 0) + LATE_S)
        end = name.rsplit("-", 1)[-1]
        if end == "raise":
            raise DeadlineExceededError("the deadline passed")
        if end == "abort":  # as the proxy's servicer answers an upstream's status
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed")
        if end == "twice":  # aborted already; then the error mapping sees a package error
            with suppress(grpc.aio.AbortError):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "first answer")
            raise DeadlineExceededError("second answer")
        if end == "bug":
            raise RuntimeError("a bug")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        return response


class Models(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return get_model_status_pb2.GetModelStatusResponse()


def _generated(predictions: Predictions) -> Callable[[grpc.aio.Server], None]:
    """As the entry registers its servicers."""

    def add(server: grpc.aio.Server) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predictions, server)  # type: ignore[no-untyped-call]
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)  # type: ignore[no-untyped-call]

    return add


def _ps_style(predictions: Predictions) -> Callable[[grpc.aio.Server], None]:
    """As the PS registers its servicers (Predict with its own handler, registered by method)."""

    def add(server: grpc.aio.Server) -> None:
        add_prediction_servicer(predictions, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)  # type: ignore[no-untyped-call]

    return add


Registration = Callable[[Predictions], Callable[[grpc.aio.Server], None]]


@asynccontextmanager
async def _serving(
    predictions: Predictions, register: Registration = _generated, registry: CollectorRegistry | None = None
) -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel]]:
    """A started server and a channel to it."""
    server = build_server(GrpcServerOptions(port=0, host="127.0.0.1"), [register(predictions)], registry=registry)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield server, channel
    finally:
        await server.stop(0)


def _predict_request(name: str) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    return request.SerializeToString()


async def _call(channel: grpc.aio.Channel, method: str, body: bytes, timeout_s: float = 5.0) -> tuple[str, str]:
    """(status code name, details) of a call with raw bytes; ("OK", "") when it succeeds."""
    try:
        await channel.unary_unary(method)(body, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return error.code().name, error.details() or ""
    return "OK", ""


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("register", [_generated, _ps_style], ids=["generated", "ps_style"])
@pytest.mark.parametrize("body", [GARBAGE, BAD_UTF8], ids=["garbage", "bad_utf8"])
@pytest.mark.parametrize(
    ("method", "message"),
    [
        (PREDICT, "tensorflow.serving.PredictRequest"),
        (GET_MODEL_METADATA, "tensorflow.serving.GetModelMetadataRequest"),
        (GET_MODEL_STATUS, "tensorflow.serving.GetModelStatusRequest"),
        (HEALTH_CHECK, "grpc.health.v1.HealthCheckRequest"),
    ],
)
def test_a_body_that_does_not_parse_is_invalid_argument_naming_its_message(
    caplog: pytest.LogCaptureFixture, register: Registration, body: bytes, method: str, message: str
) -> None:
    registry = CollectorRegistry()

    async def scenario() -> tuple[tuple[str, str], tuple[str, str], bytes]:
        async with _serving(Predictions(), register, registry) as (_server, channel):
            malformed = await _call(channel, method, body)
            # The server keeps serving, on the same connection.
            good = await _call(channel, PREDICT, _predict_request("good"))
            reply = await channel.unary_unary(PREDICT)(_predict_request("again"), timeout=5.0)
        return malformed, good, reply

    malformed, good, reply = asyncio.run(scenario())
    code, details = malformed
    assert code == "INVALID_ARGUMENT", malformed
    assert details.startswith(f"malformed {message}: "), details
    assert good == ("OK", "")
    assert predict_pb2.PredictResponse.FromString(reply).model_spec.name == "again"
    assert _errors(caplog) == []
    # Counted once, under its method; the good calls after it are not (their series is there, at 0).
    assert registry.get_sample_value("grpc_server_malformed_requests_total", {"method": method}) == 1
    if method != PREDICT:
        assert registry.get_sample_value("grpc_server_malformed_requests_total", {"method": PREDICT}) == 0


def test_a_streaming_method_passes_through_the_error_mapping() -> None:
    async def scenario() -> list[int]:
        async with _serving(Predictions()) as (server, channel):
            await server.set_serving(True)
            watch = channel.unary_stream(
                HEALTH_WATCH,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            call = watch(health_pb2.HealthCheckRequest(service=""), timeout=5.0)
            first = await call.read()
            call.cancel()
        return [first.status]

    assert asyncio.run(scenario()) == [health_pb2.HealthCheckResponse.SERVING]


async def _late_call(name: str) -> tuple[str, str]:
    """Calls Predict on model ``name`` with a short deadline; returns the client's status once the server is
    through with the call; then checks that the server still answers."""
    predictions = Predictions()
    async with _serving(predictions) as (_server, channel):
        result = await _call(channel, PREDICT, _predict_request(name), timeout_s=DEADLINE_S)
        await asyncio.wait_for(predictions.ended.wait(), 10)
        assert await _call(channel, PREDICT, _predict_request("good")) == ("OK", "")
    return result


@pytest.mark.parametrize(
    "name",
    [
        "late-cancelled-abort",
        "late-busy-abort",
        "late-cancelled-raise",
        "late-busy-raise",
        "late-cancelled-twice",
        "late-busy-twice",
        "now-twice",
    ],
)
def test_an_answer_after_the_call_ended_is_not_an_error(caplog: pytest.LogCaptureFixture, name: str) -> None:
    code, _details = asyncio.run(_late_call(name))
    expected = "UNAVAILABLE" if name == "now-twice" else "DEADLINE_EXCEEDED"
    assert code == expected
    assert _errors(caplog) == []


@pytest.mark.parametrize("name", ["now-bug", "late-cancelled-bug", "late-busy-bug"])
def test_a_bug_is_logged_with_its_traceback_once(caplog: pytest.LogCaptureFixture, name: str) -> None:
    code, details = asyncio.run(_late_call(name))
    if name == "now-bug":
        assert (code, details) == ("INTERNAL", "internal error: RuntimeError: a bug")
    else:
        assert code == "DEADLINE_EXCEEDED"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [f"{r.name}: {r.getMessage()}" for r in errors] == [
        f"monolith_serving.core.grpc_errors: unhandled error in {PREDICT}"
    ]
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], RuntimeError)
