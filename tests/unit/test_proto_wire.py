"""Hand-written lookup request/response bytes are exactly what protobuf writes for the same messages."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_serving.core import proto_wire
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.entry.ps_wire import input_key, lookup_request, model_spec_field
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2
from monolith_serving.ps.wire import lookup_response

texts = st.text(max_size=12)
versions = st.integers(0, 2**63 - 1)


def request_message(
    name: str, version: int, signature: str, inputs: dict[str, npt.NDArray[np.int64]]
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.model_spec.version.value = version
    for key, values in inputs.items():
        request.inputs[key].CopyFrom(to_tensor_proto(values))
    return request


def response_message(
    name: str, version: int, signature: str, outputs: dict[str, npt.NDArray[np.float32]]
) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    for key, values in outputs.items():
        response.outputs[key].CopyFrom(to_tensor_proto(values))
    response.model_spec.name = name
    response.model_spec.version.value = version
    response.model_spec.signature_name = signature
    return response


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**31, 2**63 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.version.value = value
    # model_spec { version { value } } ends with the varint (nothing at all for 0).
    assert request.SerializeToString().endswith(proto_wire.varint(value) if value else b"\x00")
    assert predict_pb2.PredictRequest.FromString(model_spec_field("", value, "")).model_spec.version.value == value


def test_negative_varint_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        proto_wire.varint(-1)


def test_single_input_request_and_single_output_response_are_byte_identical() -> None:
    fids = np.array([5, -3, 2**62, 0], dtype=np.int64)
    ours = lookup_request(model_spec_field("ps_1", 7, "lookup"), [(input_key("user_id"), fids)])
    assert ours == request_message("ps_1", 7, "lookup", {"user_id": fids}).SerializeToString()
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    theirs = response_message("ps_1", 7, "lookup", {"user_value": rows}).SerializeToString()
    assert lookup_response({"user_value": rows}, "ps_1", 7, "lookup") == theirs


@settings(max_examples=60, deadline=None)
@given(
    name=texts,
    version=versions,
    signature=texts,
    inputs=st.dictionaries(
        st.text(min_size=1, max_size=10), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300), max_size=3
    ),
)
def test_requests_parse_back_to_the_same_message(
    name: str, version: int, signature: str, inputs: dict[str, list[int]]
) -> None:
    arrays = {key: np.array(values, dtype=np.int64) for key, values in inputs.items()}
    ours = lookup_request(model_spec_field(name, version, signature), [(input_key(k), a) for k, a in arrays.items()])
    parsed = predict_pb2.PredictRequest.FromString(ours)
    assert parsed == request_message(name, version, signature, arrays)
    assert parsed.model_spec.HasField("version")
    for key, values in arrays.items():
        np.testing.assert_array_equal(from_tensor_proto(parsed.inputs[key], key), values)


@settings(max_examples=60, deadline=None)
@given(
    name=texts,
    version=versions,
    signature=texts,
    outputs=st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.tuples(st.integers(0, 40), st.integers(1, 33), st.integers(0, 2**32 - 1)),
        max_size=3,
    ),
)
def test_responses_parse_back_to_the_same_message(
    name: str, version: int, signature: str, outputs: dict[str, tuple[int, int, int]]
) -> None:
    arrays = {
        key: np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
        for key, (rows, dim, seed) in outputs.items()
    }
    parsed = predict_pb2.PredictResponse.FromString(lookup_response(arrays, name, version, signature))
    assert parsed == response_message(name, version, signature, arrays)
    assert parsed.model_spec.HasField("version")
    for key, values in arrays.items():
        np.testing.assert_array_equal(from_tensor_proto(parsed.outputs[key], key), values)


def test_response_of_a_non_contiguous_or_float64_matrix() -> None:
    rows = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]
    parsed = predict_pb2.PredictResponse.FromString(lookup_response({"t_value": rows}, "ps_0", 1, ""))
    np.testing.assert_array_equal(from_tensor_proto(parsed.outputs["t_value"]), rows.astype(np.float32))
