"""Wire compatibility with an independent build of the TF Serving descriptors (PyPI tensorflow-protobuf).

The peer runs in its own interpreter (tests/compat/tf_serving_peer.py) because both descriptor sets
define the same full names and cannot share a descriptor pool.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import symbol_database

from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.example import example_pb2  # noqa: F401
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2

PEER = Path(__file__).resolve().parents[1] / "compat" / "tf_serving_peer.py"


def peer(command: dict[str, Any]) -> Any:
    done = subprocess.run(
        [sys.executable, str(PEER)], input=json.dumps(command), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


MESSAGES = [
    "tensorflow.TensorProto",
    "tensorflow.TensorShapeProto",
    "tensorflow.TensorShapeProto.Dim",
    "tensorflow.ResourceHandleProto",
    "tensorflow.VariantTensorDataProto",
    "tensorflow.serving.ModelSpec",
    "tensorflow.serving.PredictRequest",
    "tensorflow.serving.PredictResponse",
    "tensorflow.serving.GetModelMetadataRequest",
    "tensorflow.serving.GetModelMetadataResponse",
    "tensorflow.serving.SignatureDefMap",
    "tensorflow.SignatureDef",
    "tensorflow.TensorInfo",
    "tensorflow.Example",
    "tensorflow.Features",
    "tensorflow.Feature",
    "tensorflow.Int64List",
    "tensorflow.FloatList",
    "tensorflow.BytesList",
]


def test_every_field_we_define_matches_tf_serving() -> None:
    theirs = peer({"op": "describe", "messages": MESSAGES})
    pool = symbol_database.Default().pool
    for name in MESSAGES:
        descriptor = pool.FindMessageTypeByName(name)
        their_fields = {f[0]: f for f in theirs[name]}
        for field in descriptor.fields:
            type_name = (
                field.message_type.full_name
                if field.message_type
                else field.enum_type.full_name
                if field.enum_type
                else ""
            )
            mine = [field.name, field.number, field.type, field.is_repeated, type_name]
            assert field.name in their_fields, f"{name}.{field.name} does not exist in TF Serving"
            assert mine == their_fields[field.name], (
                f"{name}.{field.name}: ours {mine} theirs {their_fields[field.name]}"
            )


def _tensor(values: Any, dtype: int, dims: list[int], typed_field: str | None, content: bytes = b"") -> Any:
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    if typed_field:
        getattr(tensor, typed_field).extend(values)
    else:
        tensor.tensor_content = content
    return tensor


def our_message(case: str) -> Any:
    """The same messages the peer builds, built with our stubs."""
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
        response.outputs["scores"].CopyFrom(to_tensor_proto(np.array([0.25, 0.5, 0.75], dtype=np.float32)))
        response.outputs["ids"].CopyFrom(_tensor([5, 6], types_pb2.DT_INT64, [2], "int64_val"))
        response.outputs["labels"].CopyFrom(to_tensor_proto(np.array([b"x"], dtype=object)))
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
    raise AssertionError(case)


CASES = {
    "predict_request": "tensorflow.serving.PredictRequest",
    "predict_response": "tensorflow.serving.PredictResponse",
    "metadata_request": "tensorflow.serving.GetModelMetadataRequest",
    "spec_version": "tensorflow.serving.ModelSpec",
    "spec_label": "tensorflow.serving.ModelSpec",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_identical_bytes_both_ways(case: str) -> None:
    ours = our_message(case).SerializeToString(deterministic=True)
    theirs = bytes.fromhex(peer({"op": "build", "case": case})["hex"])
    assert ours == theirs
    # Their parser re-serializes our bytes unchanged, and ours re-serializes theirs unchanged.
    assert bytes.fromhex(peer({"op": "roundtrip", "message": CASES[case], "hex": ours.hex()})["hex"]) == ours
    parsed = type(our_message(case))()
    parsed.ParseFromString(theirs)
    assert parsed.SerializeToString(deterministic=True) == theirs


def test_their_typed_and_content_tensors_decode_with_our_codec() -> None:
    request = predict_pb2.PredictRequest.FromString(
        bytes.fromhex(peer({"op": "build", "case": "predict_request"})["hex"])
    )
    np.testing.assert_array_equal(
        from_tensor_proto(request.inputs["f32_typed"]), np.array([1.5, -2.0, 3.25], np.float32)
    )
    np.testing.assert_array_equal(
        from_tensor_proto(request.inputs["f32_content"]), np.array([[0.5, 1.0], [-1.5, 2.0]], np.float32)
    )
    np.testing.assert_array_equal(from_tensor_proto(request.inputs["i64_typed"]), np.array([1, -2, 2**40]))
    np.testing.assert_array_equal(from_tensor_proto(request.inputs["i64_content"]), np.array([7, -(2**62)]))
    assert from_tensor_proto(request.inputs["strings"]).tolist() == [b"a", b"\x00\xffbc"]
