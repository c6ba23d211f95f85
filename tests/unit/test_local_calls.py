"""``core.local_calls``: a server's gRPC handlers called in its process end as the gRPC server ends them: the
answer serialized by the registered serializer, a package error or an abort as its status (trailers kept), a
deadline as DEADLINE_EXCEEDED with the handler cancelled, an unknown method as UNIMPLEMENTED."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.local_calls import LOCAL_PEER, LocalCalls
from monolith_serving.core.serving_call import PREDICT, RpcStatusError
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    predict_pb2,
    prediction_service_pb2_grpc,
)


class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    """Predict behaves as its model name says; records what its context told it."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.cancelled = asyncio.Event()

    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext) -> Any:
        name = request.model_spec.name
        self.seen.update(
            time_remaining=context.time_remaining(),
            metadata=tuple(context.invocation_metadata()),
            peer=context.peer(),
        )
        context.add_done_callback(lambda ctx: self.seen.update(done=ctx.done(), cancelled=ctx.cancelled()))
        if name == "bad":
            raise InvalidArgumentError("model_spec.name 'bad' is bad")
        if name == "denied":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no", trailing_metadata=(("why", "token"),))
        if name == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if name == "bug":
            raise KeyError("oops")
        context.set_trailing_metadata((("x-answered-by", "local"), ("grpc-internal", "dropped")))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        return response


def _calls(servicer: _Servicer) -> LocalCalls:
    return LocalCalls(
        [lambda server: prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)]
    )  # type: ignore[no-untyped-call]


def _predict(name: str) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    return request.SerializeToString()


def test_an_answer_is_serialized_with_its_trailers_and_the_context_says_what_a_grpc_one_would() -> None:
    servicer = _Servicer()

    async def call() -> Any:
        return await _calls(servicer).call(PREDICT, _predict("m"), timeout_s=5.0, metadata=(("x-request-id", "r1"),))

    reply = asyncio.run(call())
    assert predict_pb2.PredictResponse.FromString(reply.response).model_spec.name == "m"
    assert reply.trailing == (("x-answered-by", "local"),)  # gRPC's reserved keys are not relayed
    assert 0 < servicer.seen["time_remaining"] <= 5.0
    assert servicer.seen["metadata"] == (("x-request-id", "r1"),) and servicer.seen["peer"] == LOCAL_PEER
    assert (servicer.seen["done"], servicer.seen["cancelled"]) == (True, False)


@pytest.mark.parametrize(
    ("name", "code", "details", "trailing"),
    [
        ("bad", grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name 'bad' is bad", ()),
        ("denied", grpc.StatusCode.PERMISSION_DENIED, "no", (("why", "token"),)),
        ("bug", grpc.StatusCode.INTERNAL, "internal error: KeyError: 'oops'", ()),
    ],
)
def test_a_failure_ends_with_the_status_the_error_mapping_gives(
    name: str, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...]
) -> None:
    async def call() -> Any:
        return await _calls(_Servicer()).call(PREDICT, _predict(name), timeout_s=5.0, metadata=())

    with pytest.raises(RpcStatusError) as caught:
        asyncio.run(call())
    assert (caught.value.code, caught.value.message, caught.value.trailing) == (code, details, trailing)


def test_the_deadline_cancels_the_handler_and_ends_the_call_deadline_exceeded() -> None:
    servicer = _Servicer()

    async def call() -> None:
        try:
            await _calls(servicer).call(PREDICT, _predict("slow"), timeout_s=0.05, metadata=())
        finally:
            assert servicer.cancelled.is_set()

    with pytest.raises(RpcStatusError) as caught:
        asyncio.run(call())
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert (servicer.seen["done"], servicer.seen["cancelled"]) == (True, True)


def test_a_method_nobody_registered_is_unimplemented() -> None:
    async def call() -> Any:
        return await _calls(_Servicer()).call("/tensorflow.serving.Nope/Predict", b"", timeout_s=5.0, metadata=())

    with pytest.raises(RpcStatusError) as caught:
        asyncio.run(call())
    assert caught.value.code is grpc.StatusCode.UNIMPLEMENTED


def test_a_malformed_request_is_invalid_argument_naming_its_message() -> None:
    async def call() -> Any:
        return await _calls(_Servicer()).call(PREDICT, b"\xff\xff\xff", timeout_s=5.0, metadata=())

    with pytest.raises(RpcStatusError) as caught:
        asyncio.run(call())
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed tensorflow.serving.PredictRequest" in caught.value.message
