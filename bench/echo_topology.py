#!/usr/bin/env python3
"""Trivial servers with the entry's process topology: the RPC floor of ``bench/predict.py``.

``echo_topology.py ps --port P`` answers every Predict with an empty PredictResponse;
``echo_topology.py entry --port P --ps A,B`` answers Predict after calling every PS concurrently with an
empty PredictRequest (one call per shard, like the entry's fan-out). Both use the same gRPC stack as the
real services (grpc.aio on uvloop, the shared server builder), and compute nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import grpc

from monolith_serving.core.grpc_server import GrpcServerOptions, build_server, channel_options, run_async_main
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


class EchoPs(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    async def Predict(self, request: predict_pb2.PredictRequest, context: Any) -> predict_pb2.PredictResponse:
        return predict_pb2.PredictResponse()


class EchoEntry(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, ps_targets: list[str]) -> None:
        self._calls = [
            grpc.aio.insecure_channel(t, options=channel_options()).unary_unary(
                PREDICT_METHOD,
                request_serializer=predict_pb2.PredictRequest.SerializeToString,
                response_deserializer=predict_pb2.PredictResponse.FromString,
            )
            for t in ps_targets
        ]

    async def Predict(self, request: predict_pb2.PredictRequest, context: Any) -> predict_pb2.PredictResponse:
        empty = predict_pb2.PredictRequest()
        await asyncio.gather(*(call(empty, timeout=5.0) for call in self._calls))
        return predict_pb2.PredictResponse()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("ps", "entry"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ps", default="")
    args = parser.parse_args(argv)

    async def serve(stop: asyncio.Event) -> int:
        servicer: Any = EchoPs() if args.role == "ps" else EchoEntry(args.ps.split(","))
        server = build_server(
            GrpcServerOptions(port=args.port, host="127.0.0.1"),
            [lambda s: prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, s)],
        )
        await server.start()
        await server.set_serving(True)
        await stop.wait()
        await server.stop(0.5)
        return 0

    return run_async_main(serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
