"""A stand-in entry for the proxy's routing tests: a real gRPC server process with controllable behaviour.

Predict echoes its inputs as outputs and adds, per example, ``replica`` (this server's ``--name``) and
``request_id`` (the ``x-request-id`` it received); it sets trailing metadata ``x-monolith-ps-versions``.
``--delay_ms`` slows every Predict (to hold requests in flight), ``--metadata_delay_ms`` every
GetModelMetadata. Only ``--models`` are served (others
NOT_FOUND). GetModelStatus reports ``--version`` in ``--state``; HandleReloadConfigRequest answers OK and
counts calls (``reloads`` in trailing metadata).

Run: python proxy_fake_entry.py --port P --name a [--delay_ms 0] [--metadata_delay_ms 0] [--models entry]
     [--version 1] [--state 30]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.protobuf import meta_graph_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


class FakePrediction(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.models = set(args.models.split(","))

    async def _check(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if name not in self.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")

    async def Predict(self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext) -> object:
        await self._check(request.model_spec.name, context)
        if self.args.delay_ms:
            await asyncio.sleep(self.args.delay_ms / 1000)
        metadata = dict(context.invocation_metadata() or ())
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = self.args.version
        batch = 1
        for name, tensor in request.inputs.items():
            response.outputs[name].CopyFrom(tensor)
            if tensor.tensor_shape.dim:
                batch = tensor.tensor_shape.dim[0].size
        # One value per example, so the REST row format (equal batch sizes) works on the echo.
        replica = np.array([self.args.name.encode()] * batch, dtype=object)
        response.outputs["replica"].CopyFrom(to_tensor_proto(replica))
        request_id = np.array([str(metadata.get("x-request-id", "")).encode()] * batch, dtype=object)
        response.outputs["request_id"].CopyFrom(to_tensor_proto(request_id))
        context.set_trailing_metadata((("x-monolith-ps-versions", f"ps_0={self.args.version}"),))
        return response

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> object:
        await self._check(request.model_spec.name, context)
        if self.args.metadata_delay_ms:
            await asyncio.sleep(self.args.metadata_delay_ms / 1000)
        signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
        signature.inputs["x"].name = "x:0"
        signature.inputs["x"].dtype = 1  # DT_FLOAT
        signature.outputs["x"].name = "x:0"
        signature.outputs["x"].dtype = 1
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def["serving_default"].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = self.args.version
        response.metadata["signature_def"].Pack(signatures)
        return response


class FakeModel(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, args: argparse.Namespace, prediction: FakePrediction) -> None:
        self.args = args
        self.prediction = prediction
        self.reloads = 0

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> object:
        await self.prediction._check(request.model_spec.name, context)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add(version=self.args.version, state=self.args.state)
        status.status.error_message = self.args.name
        return response

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> object:
        self.reloads += 1
        context.set_trailing_metadata((("reloads", str(self.reloads)),))
        return model_management_pb2.ReloadConfigResponse()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--delay_ms", type=float, default=0.0)
    parser.add_argument("--metadata_delay_ms", type=float, default=0.0)
    parser.add_argument("--models", default="entry")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--state", type=int, default=30)
    args = parser.parse_args()
    server = grpc.aio.server()
    prediction = FakePrediction(args)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(FakeModel(args, prediction), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    asyncio.run(main())
