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
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    classification_pb2,  # noqa: F401
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
)

COMPAT = Path(__file__).resolve().parents[1] / "compat"
PEER = COMPAT / "tf_serving_peer.py"
sys.path.insert(0, str(COMPAT))
from tf_serving_cases import CASES, build_case  # noqa: E402

# The peer imports only the Predict/GetModelMetadata modules; these add the Classify/Regress/MultiInference
# messages to its descriptor pool before it runs.
PEER_PRELOAD = ("tensorflow_serving.apis.inference_pb2",)


def peer(command: dict[str, Any]) -> Any:
    preload = "".join(f"import {module}\n" for module in PEER_PRELOAD)
    code = f"{preload}import runpy\nrunpy.run_path({str(PEER)!r}, run_name='__main__')\n"
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(command), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def peer_data_type_values() -> dict[str, int]:
    """tensorflow.DataType as the PyPI build defines it: {name: number}."""
    code = (
        "import json\nfrom tensorflow.core.framework import types_pb2\n"
        "print(json.dumps({v.name: v.number for v in types_pb2.DataType.DESCRIPTOR.values}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


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
    "tensorflow.serving.ClassificationRequest",
    "tensorflow.serving.ClassificationResponse",
    "tensorflow.serving.ClassificationResult",
    "tensorflow.serving.Classifications",
    "tensorflow.serving.Class",
    "tensorflow.serving.RegressionRequest",
    "tensorflow.serving.RegressionResponse",
    "tensorflow.serving.RegressionResult",
    "tensorflow.serving.Regression",
    "tensorflow.serving.MultiInferenceRequest",
    "tensorflow.serving.MultiInferenceResponse",
    "tensorflow.serving.InferenceTask",
    "tensorflow.serving.InferenceResult",
    "tensorflow.serving.Input",
    "tensorflow.serving.ExampleList",
    "tensorflow.serving.ExampleListWithContext",
]

# Fields TF Serving added after the PyPI build (2.11) was made; tests/unit/test_proto_compat_fields.py checks
# them against the numbers and types in TF Serving's own predict.proto.
NEWER_THAN_PEER = {
    ("tensorflow.serving.PredictRequest", "predict_streamed_options"),
    ("tensorflow.serving.PredictRequest", "client_id"),
    ("tensorflow.serving.PredictRequest", "request_options"),
}
# Fields of theirs we knowingly do not declare (their bytes survive as unknown fields).
NOT_DECLARED = {("tensorflow.TensorInfo", "composite_tensor")}


def test_every_field_we_define_matches_tf_serving() -> None:
    theirs = peer({"op": "describe", "messages": MESSAGES})
    pool = symbol_database.Default().pool
    for name in MESSAGES:
        descriptor = pool.FindMessageTypeByName(name)
        their_fields = {f[0]: f for f in theirs[name]}
        for field in descriptor.fields:
            if (name, field.name) in NEWER_THAN_PEER:
                assert field.name not in their_fields, f"{name}.{field.name} is in the peer now: drop it from the list"
                continue
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


def test_we_declare_every_tf_serving_field() -> None:
    theirs = peer({"op": "describe", "messages": MESSAGES})
    pool = symbol_database.Default().pool
    missing = [
        f"{name}.{field[0]} = {field[1]}"
        for name in MESSAGES
        for field in theirs[name]
        if (name, field[0]) not in NOT_DECLARED and field[0] not in pool.FindMessageTypeByName(name).fields_by_name
    ]
    assert not missing, f"TF Serving fields we do not declare: {missing}"


def test_data_type_values_match_tf_serving() -> None:
    ours = {value.name: value.number for value in types_pb2.DataType.DESCRIPTOR.values}
    assert ours == peer_data_type_values()


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
