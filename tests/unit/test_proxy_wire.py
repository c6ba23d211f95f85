"""Reading model_spec out of serialized requests without decoding them."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, model_pb2, predict_pb2
from monolith_serving.proxy.grpc_servicer import RequestIds
from monolith_serving.proxy.wire import ModelNames, read_model_spec


def _predict_bytes(name: str, **spec: object) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = int(value)  # type: ignore[call-overload]
        else:
            setattr(request.model_spec, key, value)
    request.inputs["instances"].CopyFrom(to_tensor_proto(np.array([b"a" * 300, b"b"], dtype=object)))
    request.inputs["dense"].CopyFrom(to_tensor_proto(np.ones((4, 8), np.float32)))
    request.output_filter.append("scores")
    return request.SerializeToString()


def test_predict_request_spec_is_read_with_version_and_signature() -> None:
    spec = read_model_spec(_predict_bytes("m:entry", version=7, signature_name="serving_default"))
    assert (spec.name, spec.version.value, spec.signature_name) == ("m:entry", 7, "serving_default")


def test_spec_found_when_not_the_first_field_on_the_wire() -> None:
    # Build inputs first, then the spec: field order on the wire is the writer's choice.
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(to_tensor_proto(np.arange(3, dtype=np.int64)))
    spec_only = predict_pb2.PredictRequest()
    spec_only.model_spec.name = "late"
    raw = request.SerializeToString() + spec_only.SerializeToString()
    assert read_model_spec(raw).name == "late"
    assert predict_pb2.PredictRequest.FromString(raw).model_spec.name == "late"


def test_status_request_and_missing_spec() -> None:
    raw = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "entry", "version_label": "stable"})
    spec = read_model_spec(raw.SerializeToString())
    assert (spec.name, spec.version_label) == ("entry", "stable")
    assert read_model_spec(b"").name == ""


def _length_delimited(field: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


def test_multi_inference_uses_first_task() -> None:
    # MultiInferenceRequest { repeated InferenceTask tasks = 1; } and InferenceTask { ModelSpec model_spec = 1; }
    # (hand-encoded: our generated protos do not include inference.proto).
    tasks = [
        _length_delimited(1, _length_delimited(1, model_pb2.ModelSpec(name=name).SerializeToString()))
        for name in ("first", "second")
    ]
    assert read_model_spec(b"".join(tasks), multi_inference=True).name == "first"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05ab",  # length 5 but only 2 bytes follow
        b"\x0a",  # truncated length varint
        b"\x0b\x00",  # wire type 3 (group) is not produced by proto3 requests
        b"\x00\x01",  # field number 0
        b"\xff" * 12,  # runaway varint
    ],
)
def test_malformed_bytes_are_invalid_argument(raw: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        read_model_spec(raw)


def test_model_names_memo_matches_the_parse_and_stays_bounded() -> None:
    names = ModelNames(max_entries=2)
    raw = _predict_bytes("m:entry", version=3)
    assert names(raw) == names(raw) == read_model_spec(raw).name == "m:entry"
    for index in range(5):
        assert names(_predict_bytes(f"model-{index}")) == f"model-{index}"
    assert len(names._names) <= 2
    assert names(b"") == ""
    with pytest.raises(InvalidArgumentError):
        names(_length_delimited(1, b"\x0a\x05ab"))  # a name running past the spec's end


def test_request_ids_are_32_hex_and_distinct() -> None:
    ids = RequestIds()
    first, second = ids(), ids()
    assert len(first) == len(second) == 32 and first != second
    int(first, 16)
    assert RequestIds()()[:16] != first[:16]
