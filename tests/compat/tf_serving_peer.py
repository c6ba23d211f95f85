"""Runs in a separate interpreter with only the PyPI ``tensorflow-protobuf`` descriptors loaded.

Our protos register the same full names (tensorflow.TensorProto, ...), so both sets cannot live in one
descriptor pool; the compat tests talk to this script over stdin/stdout as JSON instead.

Commands (one JSON object on stdin, one on stdout):
  {"op": "describe", "messages": [full names]} -> {name: [[field, number, type, repeated, type_name], ...]}
  {"op": "roundtrip", "message": full name, "hex": bytes} -> {"hex": re-serialized bytes}
  {"op": "build", "case": name} -> {"hex": bytes of a message the peer builds itself}
"""

from __future__ import annotations

import json
import sys
from typing import Any

from google.protobuf import symbol_database, wrappers_pb2  # noqa: F401
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2

_MODULES = {
    "tensorflow.serving.ModelSpec": model_pb2.ModelSpec,
    "tensorflow.serving.PredictRequest": predict_pb2.PredictRequest,
    "tensorflow.serving.PredictResponse": predict_pb2.PredictResponse,
    "tensorflow.serving.GetModelMetadataRequest": get_model_metadata_pb2.GetModelMetadataRequest,
    "tensorflow.serving.GetModelMetadataResponse": get_model_metadata_pb2.GetModelMetadataResponse,
    "tensorflow.serving.SignatureDefMap": get_model_metadata_pb2.SignatureDefMap,
    "tensorflow.TensorProto": tensor_pb2.TensorProto,
    "tensorflow.Example": example_pb2.Example,
}


def _describe(name: str) -> list[list[Any]]:
    pool = symbol_database.Default().pool
    descriptor = pool.FindMessageTypeByName(name)
    return [
        [
            f.name,
            f.number,
            f.type,
            f.is_repeated,
            (f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else ""),
        ]
        for f in descriptor.fields
    ]


def _tensor(values: Any, dtype: int, dims: list[int], typed_field: str | None, content: bytes = b"") -> Any:
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    if typed_field:
        getattr(tensor, typed_field).extend(values)
    else:
        tensor.tensor_content = content
    return tensor


def _build(case: str) -> Any:
    import struct

    if case == "predict_request":
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "entry"
        request.model_spec.signature_name = "serving_default"
        request.model_spec.version.value = 1700000000
        request.inputs["f32_typed"].CopyFrom(_tensor([1.5, -2.0, 3.25], types_pb2.DT_FLOAT, [3], "float_val"))
        request.inputs["f32_content"].CopyFrom(
            _tensor(None, types_pb2.DT_FLOAT, [2, 2], None, struct.pack("<4f", 0.5, 1.0, -1.5, 2.0))
        )
        request.inputs["i64_typed"].CopyFrom(_tensor([1, -2, 2**40], types_pb2.DT_INT64, [3], "int64_val"))
        request.inputs["i64_content"].CopyFrom(
            _tensor(None, types_pb2.DT_INT64, [2], None, struct.pack("<2q", 7, -(2**62)))
        )
        request.inputs["strings"].CopyFrom(_tensor([b"a", b"\x00\xffbc"], types_pb2.DT_STRING, [2], "string_val"))
        request.output_filter.append("scores")
        return request
    if case == "predict_response":
        response = predict_pb2.PredictResponse()
        response.model_spec.name = "entry"
        response.model_spec.version.value = 3
        response.outputs["scores"].CopyFrom(
            _tensor(None, types_pb2.DT_FLOAT, [3], None, struct.pack("<3f", 0.25, 0.5, 0.75))
        )
        response.outputs["ids"].CopyFrom(_tensor([5, 6], types_pb2.DT_INT64, [2], "int64_val"))
        response.outputs["labels"].CopyFrom(_tensor([b"x"], types_pb2.DT_STRING, [1], "string_val"))
        return response
    if case == "metadata_request":
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = "entry"
        request.metadata_field.append("signature_def")
        return request
    if case == "spec_version":
        spec = model_pb2.ModelSpec(name="ps_0", signature_name="lookup")
        spec.version.value = 42
        return spec
    if case == "spec_label":
        return model_pb2.ModelSpec(name="ps_0", signature_name="lookup", version_label="stable")
    raise SystemExit(f"unknown case {case}")


def main() -> None:
    command = json.loads(sys.stdin.read())
    op = command["op"]
    if op == "describe":
        result: Any = {name: _describe(name) for name in command["messages"]}
    elif op == "roundtrip":
        message = _MODULES[command["message"]]()
        message.ParseFromString(bytes.fromhex(command["hex"]))
        result = {"hex": message.SerializeToString(deterministic=True).hex()}
    elif op == "build":
        result = {"hex": _build(command["case"]).SerializeToString(deterministic=True).hex()}
    else:
        raise SystemExit(f"unknown op {op}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
