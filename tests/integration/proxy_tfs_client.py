"""A client built only from the PyPI ``tensorflow-protobuf`` stubs (no monolith_serving import), run in its
own interpreter: those descriptors register the same full names as ours, so both cannot share a process.

stdin: {"address": "host:port", "model": "entry", "instances_hex": [...]}; stdout: {"scores": [...],
"shape": [...], "ps_versions": "...", "signatures": [...]} from Predict and GetModelMetadata through the proxy.
(ModelService is not exercised: the package's get_model_status_pb2 imports ``tensorflow.tsl``, which
tensorflow-protobuf 2.11.0 does not ship.)
"""

from __future__ import annotations

import json
import struct
import sys

import grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc


def main() -> None:
    command = json.loads(sys.stdin.read())
    instances = [bytes.fromhex(h) for h in command["instances_hex"]]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = command["model"]
    request.model_spec.signature_name = "serving_default"
    request.inputs["instances"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(instances))]
            ),
            string_val=instances,
        )
    )
    with grpc.insecure_channel(command["address"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response, call = stub.Predict.with_call(request, timeout=30)
        metadata = stub.GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec={"name": command["model"]}, metadata_field=["signature_def"]
            ),
            timeout=30,
        )
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    scores = response.outputs["scores"]
    shape = [d.size for d in scores.tensor_shape.dim]
    if scores.tensor_content:
        values = list(struct.unpack(f"<{len(scores.tensor_content) // 4}f", scores.tensor_content))
    else:
        values = list(scores.float_val)
    print(
        json.dumps(
            {
                "scores": values,
                "shape": shape,
                "ps_versions": dict(call.trailing_metadata()).get("x-monolith-ps-versions"),
                "signatures": sorted(signatures.signature_def),
            }
        )
    )


if __name__ == "__main__":
    main()
