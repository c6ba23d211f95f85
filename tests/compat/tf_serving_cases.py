"""The compat test messages, built from whichever set of generated modules is passed in.

The test builds them with our stubs, tests/compat/tf_serving_peer.py with tensorflow-protobuf's; both
must serialize to the same bytes.
"""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

CASES = {
    "predict_request": "tensorflow.serving.PredictRequest",
    "predict_response": "tensorflow.serving.PredictResponse",
    "metadata_request": "tensorflow.serving.GetModelMetadataRequest",
    "spec_version": "tensorflow.serving.ModelSpec",
    "spec_label": "tensorflow.serving.ModelSpec",
}


def _tensor(
    tensor_pb2: ModuleType, values: Any, dtype: int, dims: list[int], typed_field: str | None, content: bytes = b""
) -> Any:
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    if typed_field:
        getattr(tensor, typed_field).extend(values)
    else:
        tensor.tensor_content = content
    return tensor


def build_case(
    case: str,
    *,
    model_pb2: ModuleType,
    predict_pb2: ModuleType,
    get_model_metadata_pb2: ModuleType,
    tensor_pb2: ModuleType,
    types_pb2: ModuleType,
) -> Any:
    """One message of CASES: float32, int64 and string tensors in typed fields and tensor_content."""
    if case == "predict_request":
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "entry"
        request.model_spec.signature_name = "serving_default"
        request.model_spec.version.value = 1700000000
        add = request.inputs
        add["f32_typed"].CopyFrom(_tensor(tensor_pb2, [1.5, -2.0, 3.25], types_pb2.DT_FLOAT, [3], "float_val"))
        add["f32_content"].CopyFrom(
            _tensor(tensor_pb2, None, types_pb2.DT_FLOAT, [2, 2], None, struct.pack("<4f", 0.5, 1.0, -1.5, 2.0))
        )
        add["i64_typed"].CopyFrom(_tensor(tensor_pb2, [1, -2, 2**40], types_pb2.DT_INT64, [3], "int64_val"))
        add["i64_content"].CopyFrom(
            _tensor(tensor_pb2, None, types_pb2.DT_INT64, [2], None, struct.pack("<2q", 7, -(2**62)))
        )
        add["strings"].CopyFrom(_tensor(tensor_pb2, [b"a", b"\x00\xffbc"], types_pb2.DT_STRING, [2], "string_val"))
        request.output_filter.append("scores")
        return request
    if case == "predict_response":
        response = predict_pb2.PredictResponse()
        response.model_spec.name = "entry"
        response.model_spec.version.value = 3
        response.outputs["scores"].CopyFrom(
            _tensor(tensor_pb2, None, types_pb2.DT_FLOAT, [3], None, struct.pack("<3f", 0.25, 0.5, 0.75))
        )
        response.outputs["ids"].CopyFrom(_tensor(tensor_pb2, [5, 6], types_pb2.DT_INT64, [2], "int64_val"))
        response.outputs["labels"].CopyFrom(_tensor(tensor_pb2, [b"x"], types_pb2.DT_STRING, [1], "string_val"))
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
    raise ValueError(f"unknown case {case}")
