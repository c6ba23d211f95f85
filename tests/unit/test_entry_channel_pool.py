"""The entry's channels to PS/dense replicas: a replica leaving discovery must not cancel the calls it still
carries, and a replica answering CANCELLED (shutting down with calls in flight) is retried on another one."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from test_entry_ps_coalesce import DIMS, SlowChannels, _fanout, rows_of

from monolith_serving.entry.ps_client import ChannelPool
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


class SlowPredict(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    async def Predict(self, request: predict_pb2.PredictRequest, context: Any) -> predict_pb2.PredictResponse:
        await asyncio.sleep(0.4)
        return predict_pb2.PredictResponse(model_spec=request.model_spec)


async def _call_while(action: str) -> str:
    """Starts a 0.4 s Predict through a ChannelPool, then retires (``retain``) or closes the pool mid-call;
    how the call ended. (grpc.aio cancels the calls of a channel closed under them: the awaiting task gets
    CancelledError, which in a server handler becomes CANCELLED for its own client.)"""
    server = grpc.aio.server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(SlowPredict(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    pool = ChannelPool(retire_grace_s=10.0)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ps_0"
    try:
        call = asyncio.ensure_future(pool.predict(address)(request, timeout=5.0))
        await asyncio.sleep(0.15)
        if action == "retain":
            await pool.retain(set())
        else:
            await pool.close()
        try:
            reply = await call
        except asyncio.CancelledError:
            return "cancelled"
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        assert reply.model_spec.name == "ps_0"
        return "ok"
    finally:
        await pool.close()
        await server.stop(0)


@pytest.mark.parametrize(("action", "outcome"), [("retain", "ok"), ("close", "cancelled")])
def test_a_retired_channel_lets_its_call_finish_while_close_cancels_it(action: str, outcome: str) -> None:
    assert asyncio.run(_call_while(action)) == outcome


class CancellingChannels(SlowChannels):
    """``cancelled:*`` replicas answer CANCELLED, as a PS does when it stops with calls still in flight."""

    def lookup(self, address: str) -> Any:
        answer = super().lookup(address)
        if not address.startswith("cancelled"):
            return answer

        async def call(request: bytes, *, timeout: float) -> predict_pb2.PredictResponse:
            self.requests.append((address, predict_pb2.PredictRequest.FromString(request)))
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Locally cancelled by application!"
            )

        return call


def test_a_replica_answering_cancelled_is_retried_on_another() -> None:
    async def scenario() -> None:
        channels = CancellingChannels()
        fanout = _fanout(channels, [["cancelled:0", "a:0"], ["b:1"]], coalesce=False)
        ask = {"user": np.array([2, 4, 6], dtype=np.int64)}
        # Replicas are rotated per call: across two calls the cancelling one is tried first once.
        for _ in range(2):
            result = await fanout.lookup(1, ask, DIMS, timeout_s=5.0)
            np.testing.assert_array_equal(result.values["user"], rows_of(ask["user"], DIMS["user"]))
        assert any(address == "cancelled:0" for address, _ in channels.requests)

    asyncio.run(scenario())
