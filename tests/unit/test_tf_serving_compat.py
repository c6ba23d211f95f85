"""Wire compatibility with an independent build of the TF Serving descriptors (PyPI tensorflow-protobuf).

The peer runs in its own interpreter (tests/compat/tf_serving_peer.py) because both descriptor sets
define the same full names and cannot share a descriptor pool.
"""

from __future__ import annotations

import json
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

COMPAT = Path(__file__).resolve().parents[1] / "compat"
PEER = COMPAT / "tf_serving_peer.py"
sys.path.insert(0, str(COMPAT))
from tf_serving_cases import CASES, build_case  # noqa: E402


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


def our_message(case: str) -> Any:
    return build_case(
        case,
        model_pb2=model_pb2,
        predict_pb2=predict_pb2,
        get_model_metadata_pb2=get_model_metadata_pb2,
        tensor_pb2=tensor_pb2,
        types_pb2=types_pb2,
    )


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


def test_our_encoder_writes_what_tf_serving_writes() -> None:
    response = predict_pb2.PredictResponse.FromString(
        bytes.fromhex(peer({"op": "build", "case": "predict_response"})["hex"])
    )
    scores = to_tensor_proto(np.array([0.25, 0.5, 0.75], dtype=np.float32))
    labels = to_tensor_proto(np.array([b"x"], dtype=object))
    assert scores.SerializeToString() == response.outputs["scores"].SerializeToString()
    assert labels.SerializeToString() == response.outputs["labels"].SerializeToString()
