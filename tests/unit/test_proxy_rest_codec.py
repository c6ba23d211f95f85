"""TF Serving REST JSON <-> PredictRequest/PredictResponse, and REST path parsing."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from monolith_serving.core import rest_codec
from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError
from monolith_serving.core.rest_codec import (
    AnswerSize,
    DecodeCancel,
    DecodeCancelled,
    ModelRef,
    answer_size,
    build_predict_request,
    model_metadata_json,
    parse_predict_body,
    predict_response_text,
)
from monolith_serving.core.rest_gateway import RestTarget, parse_rest_target
from monolith_serving.core.tensor_codec import MAX_FILLED_ELEMENTS, from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2


def _request(body: object, signature: dict[str, int] | None = None, model: ModelRef | None = None) -> object:
    parsed = parse_predict_body(json.dumps(body).encode())
    return build_predict_request(model or ModelRef(name="m"), parsed, signature)


def test_row_format_named_inputs_stack_on_a_batch_dimension() -> None:
    body = {"instances": [{"a": [1.0, 2.0], "s": "x"}, {"a": [3.0, 4.5], "s": {"b64": "AP8="}}]}
    request = _request(body)
    assert isinstance(request, predict_pb2.PredictRequest)
    a = from_tensor_proto(request.inputs["a"])
    assert request.inputs["a"].dtype == types_pb2.DT_FLOAT and a.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert from_tensor_proto(request.inputs["s"]).tolist() == [b"x", b"\x00\xff"]
    assert request.model_spec.signature_name == "serving_default"


def test_bare_instances_use_the_signature_single_input_and_its_dtype() -> None:
    request = _request({"instances": [[1, 2], [3, 4]], "signature_name": "sig"}, {"x": types_pb2.DT_FLOAT})
    assert isinstance(request, predict_pb2.PredictRequest)
    assert request.inputs["x"].dtype == types_pb2.DT_FLOAT  # ints become floats per the signature
    assert from_tensor_proto(request.inputs["x"]).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert request.model_spec.signature_name == "sig"


def test_columnar_inputs_and_inferred_dtypes() -> None:
    request = _request({"inputs": {"i": [[1, 2, 3]], "b": [True, False], "f": 1.5}}, None)
    assert isinstance(request, predict_pb2.PredictRequest)
    assert request.inputs["i"].dtype == types_pb2.DT_INT64 and from_tensor_proto(request.inputs["i"]).shape == (1, 3)
    assert request.inputs["b"].dtype == types_pb2.DT_BOOL
    assert from_tensor_proto(request.inputs["f"]).shape == ()


def test_version_and_label_go_into_the_model_spec() -> None:
    versioned = _request({"inputs": {"x": 1}}, None, ModelRef(name="m", version=7))
    labelled = _request({"inputs": {"x": 1}}, None, ModelRef(name="m", label="canary"))
    assert isinstance(versioned, predict_pb2.PredictRequest) and isinstance(labelled, predict_pb2.PredictRequest)
    assert versioned.model_spec.version.value == 7 and labelled.model_spec.version_label == "canary"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "JSON Parse error"),
        (b"[1, 2]", "must be an object"),
        (b'{"instances": [1], "inputs": [1]}', "exactly one"),
        (b"{}", "exactly one"),
        (b'{"instances": []}', "non-empty"),
        (b'{"instances": [{"a": [1, 2]}, {"a": [1]}]}', "ragged"),
        (b'{"instances": [{"a": 1}, {"b": 1}]}', "same keys"),
        (b'{"instances": [{"a": 1}, 2]}', "same keys"),
        (b'{"inputs": {"a": {"b64": "!!"}}}', "base64"),
        (b'{"inputs": {"a": [1, "x"]}}', "mixes"),
        (b'{"inputs": {"a": null}}', "mixes"),
        (b'{"inputs": [1, 2]}', "signature"),
        (b'{"inputs": {"a": 1}, "signature_name": 3}', "signature_name"),
        (b'{"inputs": {"a": [true, 2]}}', "mixes"),
        (b'{"inputs": {"a": [[1], 2]}}', "ragged"),
        (b'{"inputs": {"a": [{"b64": "AA=="}, {"c": "AA=="}]}}', "mixes"),
        # Text no UTF-8 can hold (an unpaired surrogate escape), named by its field.
        (rb'{"inputs": {"a": ["ok", "\ud800"]}}', r"input 'a': string: '\\ud800' is not valid Unicode"),
        (rb'{"inputs": {"a": [{"b64": "AA=="}, "\udc00"]}}', r"input 'a': string: '\\udc00' is not valid Unicode"),
        (rb'{"signature_name": "\ud800", "inputs": {"a": 1}}', r'"signature_name": \'\\ud800\' is not valid'),
        (rb'{"inputs": {"\ud800": 1}}', r"input name: '\\ud800' is not valid Unicode"),
        (rb'{"instances": [{"\ud800": 1}]}', r"input name: '\\ud800' is not valid Unicode"),
        # Numbers: too big for the parser (as TF Serving's), for a double, for int64, for the tensor's dtype.
        (b'{"inputs": {"a": [' + b"9" * 5000 + b"]}}", "JSON Parse error: number too big: .*5000 digits"),
        (b'{"inputs": {"a": [1.5, 1e999]}}', "JSON Parse error: Number too big to be stored in double"),
        (b'{"inputs": {"a": [-Infinity, -1e999]}}', "JSON Parse error: Number too big to be stored in double"),
        (b'{"inputs": {"a": [' + b"9" * 30 + b"]}}", "cannot convert to DT_INT64"),
        (b"", "JSON Parse error: The document is empty"),
        (b" \n\t", "JSON Parse error: The document is empty"),
        (b'{"inputs": {"a": "\xff"}}', "JSON Parse error: the body is not UTF-8"),
        (b'{"inputs": {"a": {"b64": "YWJjZ"}}}', "not valid base64"),  # no padding makes 5 characters whole
        (b'{"inputs": {"a": {"b64": "YW="}}}', "not valid base64"),  # padding given must be right
        # numpy's most dimensions: deeper lists were a 500.
        (b'{"inputs": {"a": ' + b"[" * 65 + b"1" + b"]" * 65 + b"}}", "nested deeper than 64"),
    ],
)
def test_malformed_bodies_are_invalid_argument(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        build_predict_request(ModelRef(name="m"), parse_predict_body(body), None)


def test_signature_dtype_mismatch_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="DT_FLOAT"):
        _request({"inputs": {"x": ["text"]}}, {"x": types_pb2.DT_FLOAT})
    # What numpy would convert by changing it (2.5 -> 2, 2 -> true), TF Serving refuses.
    for dtype in (types_pb2.DT_INT64, types_pb2.DT_INT32, types_pb2.DT_UINT8):
        with pytest.raises(InvalidArgumentError, match=r"input 'x': 2.5 is not an integer"):
            _request({"inputs": {"x": [1, 2.5]}}, {"x": dtype})
    with pytest.raises(InvalidArgumentError, match=r"input 'x': DT_BOOL needs true or false, got 2"):
        _request({"instances": [True, 2]}, {"x": types_pb2.DT_BOOL})


def test_bodies_tf_serving_takes() -> None:
    # An empty signature_name is the default signature; what follows the document is not read; base64 may come
    # without its padding.
    body = b'\xef\xbb\xbf {"signature_name": "", "instances": [{"b64": "YQ"}, {"b64": "YWI"}]} trailing'
    request = build_predict_request(ModelRef(name="m"), parse_predict_body(body), {"s": types_pb2.DT_STRING})
    assert request.model_spec.signature_name == "serving_default"
    assert from_tensor_proto(request.inputs["s"]).tolist() == [b"a", b"ab"]


def test_what_tf_serving_makes_of_lax_bodies() -> None:
    # absl::Base64Unescape skips whitespace, so MIME-wrapped base64 (base64.encodebytes) decodes.
    wrapped = base64.encodebytes(b"x" * 60).decode()
    assert "\n" in wrapped
    request = _request({"inputs": {"s": [{"b64": wrapped}, {"b64": " YW\tJj\r\n"}]}}, {"s": types_pb2.DT_STRING})
    assert from_tensor_proto(request.inputs["s"]).tolist() == [b"x" * 60, b"abc"]
    # RapidJSON's GetFloat casts a double beyond a float's range to infinity; a key given twice counts once, first.
    body = b'{"inputs": {"f": [1.0, 1e39, -1e39], "f": [2.0]}, "inputs": {"g": [3.0]}}'
    request = build_predict_request(ModelRef(name="m"), parse_predict_body(body), {"f": types_pb2.DT_FLOAT})
    assert list(request.inputs) == ["f"]
    assert from_tensor_proto(request.inputs["f"]).tolist() == [1.0, float("inf"), float("-inf")]


def test_metadata_prints_every_field() -> None:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "m"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def["serving_default"].inputs["x"].tensor_shape.dim.add(size=2)
    response.metadata["signature_def"].Pack(signatures)
    assert model_metadata_json(response) == {
        "model_spec": {"name": "m", "signature_name": ""},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "x": {
                                "dtype": "DT_INVALID",
                                "tensor_shape": {"dim": [{"size": "2", "name": ""}], "unknown_rank": False},
                            }
                        },
                        "outputs": {},
                        "method_name": "",
                    }
                }
            }
        },
    }


def _response(**outputs: np.ndarray) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    for name, array in outputs.items():
        response.outputs[name].CopyFrom(to_tensor_proto(array))
    return response


def response_document(response: predict_pb2.PredictResponse, row_format: bool) -> Any:
    """The REST answer's JSON body for ``response``, parsed (``predict_response_text`` writes it)."""
    return json.loads(predict_response_text(response, row_format))


def test_row_and_columnar_responses() -> None:
    single = _response(scores=np.array([[0.5], [0.25]], np.float32))
    assert response_document(single, row_format=True) == {"predictions": [[0.5], [0.25]]}
    assert response_document(single, row_format=False) == {"outputs": [[0.5], [0.25]]}
    two = _response(p=np.array([1.0, 2.0], np.float32), label=np.array([b"x", b"\xff"], dtype=object))
    rows = response_document(two, row_format=True)["predictions"]
    assert rows == [{"label": "x", "p": 1.0}, {"label": {"b64": base64.b64encode(b"\xff").decode()}, "p": 2.0}]
    raw = _response(id_bytes=np.array([b"ab"], dtype=object))
    assert response_document(raw, row_format=False) == {"outputs": [{"b64": "YWI="}]}


def test_responses_nest_every_shape() -> None:
    cube = np.arange(8, dtype=np.int32).reshape(2, 2, 2)
    assert response_document(_response(c=cube), row_format=True) == {"predictions": cube.tolist()}
    assert response_document(_response(c=cube), row_format=False) == {"outputs": cube.tolist()}
    empty = _response(e=np.zeros((2, 0, 3), np.float32))
    assert response_document(empty, row_format=False) == {"outputs": [[], []]}
    assert response_document(empty, row_format=True) == {"predictions": [[], []]}
    none = _response(e=np.zeros((0, 2), np.float32), n=np.zeros(0, np.int64))
    assert response_document(none, row_format=True) == {"predictions": []}
    assert predict_response_text(_response(s=np.array(2.5, np.float64)), row_format=False) == '{"outputs": 2.5}'
    with pytest.raises(InvalidArgumentError, match="no outputs"):
        predict_response_text(predict_pb2.PredictResponse(), row_format=False)


def test_floats_are_spelled_as_tf_serving_spells_them() -> None:
    """6 significant digits when they read back as the value, else 9 (float) or 17 (double); '.0' on whole
    numbers; NaN/Infinity bare (json_tensor.cc, WriteDecimal)."""
    values = [0.0, -0.0, 0.1, 0.7310586, 123456.0, 1234567.0, 1e-45, -2.5e-7, float("nan"), float("-inf")]
    spelled = json.loads(
        predict_response_text(_response(f=np.array(values, np.float32)), row_format=False),
        parse_float=str,
        parse_constant=str,
    )
    assert spelled == {
        "outputs": [
            "0.0",
            "-0.0",
            "0.1",
            "0.731058598",
            "123456.0",
            "1234567.0",
            "1.4013e-45",
            "-2.5e-07",
            "NaN",
            "-Infinity",
        ]
    }
    half = json.loads(
        predict_response_text(_response(h=np.array([0.1, 2.0], np.float16)), row_format=False), parse_float=str
    )
    assert half == {"outputs": ["0.0999755859", "2.0"]}  # the half's value, written as a float's
    double = json.loads(
        predict_response_text(_response(d=np.array([1e300, 2 / 3, 1e22])), row_format=False), parse_float=str
    )
    assert double == {"outputs": ["1e+300", "0.66666666666666663", "1e+22"]}


def test_row_response_needs_one_batch_size() -> None:
    mixed = _response(a=np.zeros(2, np.float32), b=np.zeros(3, np.float32))
    with pytest.raises(InvalidArgumentError, match="batch sizes"):
        response_document(mixed, row_format=True)
    with pytest.raises(InvalidArgumentError, match="scalar"):
        response_document(_response(a=np.array(1.0, np.float32)), row_format=True)


def test_rest_paths() -> None:
    def target(method: str, path: str) -> RestTarget:
        return parse_rest_target(method, path)

    assert target("GET", "/v1/models/m:entry") == RestTarget("GetModelStatus", ModelRef(name="m:entry"))
    assert target("POST", "/v1/models/m:entry:predict") == RestTarget("Predict", ModelRef(name="m:entry"))
    assert target("GET", "/v1/models/m/versions/3/metadata") == RestTarget(
        "GetModelMetadata", ModelRef(name="m", version=3)
    )
    assert target("GET", "/v1/models/metadata") == RestTarget("GetModelStatus", ModelRef(name="metadata"))
    assert target("POST", "/V1/MODELS/m/LABELS/stable:regress") == RestTarget(
        "Regress", ModelRef(name="m", label="stable")
    )
    assert target("POST", "/v1/models/a%2Fb%3A%20c/labels/%E2%9C%93:predict") == RestTarget(
        "Predict", ModelRef(name="a/b: c", label="\u2713")
    )
    for method, path in [
        ("GET", "/v1/models/m/versions/x"),
        ("GET", "/v1/models/m/other/1"),
        ("GET", "/v1/models//versions/1"),
        ("GET", "/v1/models/m/"),
        ("GET", "/v1/modelsx"),
        ("GET", "/v1/models/m/versions/metadata"),
        ("POST", "/v1/models/m"),
        ("POST", "/v1/models/m:PREDICT"),  # TF Serving's verbs are lower case only
        ("POST", "/v1/models/m/metadata:predict"),
        ("POST", "/v1/models/m:predict/"),
        ("GET", "/v1/models/%FF"),
    ]:
        with pytest.raises(MonolithServingError):  # answered 400 by the gateway
            target(method, path)


def test_numbers_convert_in_bulk_with_the_per_element_semantics() -> None:
    values = list(range(-50_000, 50_000))
    request = _request({"inputs": {"i": values, "m": [[v, v + 0.5] for v in values[:1000]], "e": [[], []]}})
    assert isinstance(request, predict_pb2.PredictRequest)
    i, m, e = (from_tensor_proto(request.inputs[k]) for k in ("i", "m", "e"))
    assert request.inputs["i"].dtype == types_pb2.DT_INT64 and i.tolist() == values
    assert (
        request.inputs["m"].dtype == types_pb2.DT_FLOAT
        and m.shape == (1000, 2)
        and m[1].tolist() == [-49_999, -49_998.5]
    )
    assert request.inputs["e"].dtype == types_pb2.DT_FLOAT and e.shape == (2, 0)
    deep = build_predict_request(
        ModelRef(name="m"), parse_predict_body(b'{"inputs": {"d": ' + b"[" * 64 + b"1]" + b"]" * 63 + b"}}"), None
    )
    assert from_tensor_proto(deep.inputs["d"]).ndim == 64  # numpy's most dimensions


def test_signature_dtypes_take_booleans_and_ints_as_numbers() -> None:
    signature = {"f": types_pb2.DT_FLOAT, "n": types_pb2.DT_INT32, "d": types_pb2.DT_DOUBLE}
    request = _request({"inputs": {"f": [True, 2, 2.5], "n": [[1, False]], "d": [1e300, 2**64]}}, signature)
    assert isinstance(request, predict_pb2.PredictRequest)
    assert from_tensor_proto(request.inputs["f"]).tolist() == [1.0, 2.0, 2.5]
    assert from_tensor_proto(request.inputs["n"]).tolist() == [[1, 0]]
    assert from_tensor_proto(request.inputs["d"]).tolist() == [1e300, float(2**64)]


def test_non_finite_literals_and_surrogate_pairs_are_accepted() -> None:
    body = b'{"signature_name": "\\ud83d\\ude00", "inputs": {"x": [NaN, Infinity, -Infinity], "s": ["\\ud83d\\ude00"]}}'
    request = build_predict_request(ModelRef(name="m"), parse_predict_body(body), None)
    x = from_tensor_proto(request.inputs["x"])
    assert np.isnan(x[0]) and x[1:].tolist() == [float("inf"), float("-inf")]
    assert from_tensor_proto(request.inputs["s"]).tolist() == ["\U0001f600".encode()]
    assert request.model_spec.signature_name == "\U0001f600"


def test_a_cancelled_decode_stops_at_its_next_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decode nobody waits for any more (its deadline passed) stops instead of finishing for nobody."""
    body = json.dumps({"instances": [{f"c{k}": [i, 0.5] for k in range(5)} for i in range(100)]}).encode()
    converted: list[str] = []
    convert = rest_codec.json_to_tensor

    def convert_then_cancel(value: Any, name: str, datatype: int | None, *cancel: DecodeCancel | None) -> Any:
        tensor = convert(value, name, datatype, *cancel)
        converted.append(name)
        stop.set()  # the deadline passes once the first input is converted
        return tensor

    monkeypatch.setattr(rest_codec, "json_to_tensor", convert_then_cancel)
    stop = DecodeCancel()
    with pytest.raises(DecodeCancelled):
        build_predict_request(ModelRef(name="m"), parse_predict_body(body), None, stop)
    assert len(converted) == 1, converted  # not the 4 inputs left
    # Set before: parsing stops at the first number, converting before the first input.
    with pytest.raises(DecodeCancelled):
        parse_predict_body(body, on_thread=True, cancel=stop)
    with pytest.raises(DecodeCancelled):
        build_predict_request(ModelRef(name="m"), parse_predict_body(body), None, stop)
    assert len(converted) == 1


def _answers() -> list[tuple[predict_pb2.PredictResponse, bool]]:
    """Responses of every kind of leaf and nesting, each with the request format it answers."""
    cube = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7) / 7
    wide = np.arange(2 * 11, dtype=np.int64).reshape(2, 11)
    strings = np.array([b"a", b"\xff", b"", b"text"] * 3, dtype=object)
    return [
        (_response(c=cube), True),
        (_response(c=cube), False),
        (_response(w=wide, d=np.linspace(0, 1, 2)), True),
        (_response(s=strings, s_bytes=strings, ok=np.arange(12) % 3 == 0), True),
        (_response(e=np.zeros((4, 0, 2), np.float32)), True),
        (_response(h=np.array([0.1, 2.0, 1e4, 65504.0, np.inf], np.float16)), False),
    ]


@pytest.mark.parametrize("step", [1, 3, 8])
def test_answers_written_in_passes_are_the_answers_written_at_once(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large answer is written in passes of ``_WRITE_STEP_ELEMENTS`` (each C-level pass holds the GIL, so
    the event loop, only that long): passes of any size write the same text."""
    at_once = [predict_response_text(response, row_format) for response, row_format in _answers()]
    monkeypatch.setattr(rest_codec, "_WRITE_STEP_ELEMENTS", step)
    assert [predict_response_text(response, row_format) for response, row_format in _answers()] == at_once


def test_a_cancelled_write_stops_at_its_next_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer nobody waits for any more (its deadline passed) stops being written instead of finishing."""
    monkeypatch.setattr(rest_codec, "_WRITE_STEP_ELEMENTS", 4)
    written: list[int] = []
    write_step = rest_codec._float_step_texts

    def write_then_cancel(values: np.ndarray) -> list[str]:
        written.append(len(values))
        stop.set()  # the deadline passes once the first pass is written
        return write_step(values)

    monkeypatch.setattr(rest_codec, "_float_step_texts", write_then_cancel)
    stop = DecodeCancel()
    response = _response(y=np.zeros((20, 1), np.float32))
    with pytest.raises(DecodeCancelled):
        predict_response_text(response, row_format=True, cancel=stop)
    assert written == [4], written  # not the 4 passes left
    with pytest.raises(DecodeCancelled):  # set before: not a pass is written
        predict_response_text(response, row_format=True, cancel=stop)
    assert written == [4]


def test_an_answer_size_counts_what_writing_it_takes() -> None:
    two = _response(p=np.zeros((3, 4), np.float32), label=np.array([b"x"] * 3, dtype=object))
    assert answer_size(two, 100) == AnswerSize(elements=15, wire_bytes=100)
    assert AnswerSize(elements=15, wire_bytes=100).budget_bytes == 100 + 8 * 15
    # An output with a zero dimension holds no values, but its empty lists are written: 5 "[]" and the list of them.
    assert answer_size(_response(e=np.zeros((5, 0, 3), np.float32)), 10).elements == 6
    # An output filled from one value counts its elements, at most what decoding it can fill.
    filled = predict_pb2.PredictResponse()
    tensor = filled.outputs["f"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add().size = 1000
    tensor.float_val.append(0.5)
    assert answer_size(filled, filled.ByteSize()).elements == 1000
    tensor.tensor_shape.dim.add().size = 1 << 40
    assert answer_size(filled, filled.ByteSize()).elements == MAX_FILLED_ELEMENTS


def _empty_output(*sizes: int) -> predict_pb2.PredictResponse:
    """A reply whose one DT_FLOAT output "e" has shape ``sizes`` and no values (a few bytes on the wire)."""
    response = predict_pb2.PredictResponse()
    tensor = response.outputs["e"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in sizes:
        tensor.tensor_shape.dim.add().size = size
    return response


def test_an_output_with_a_zero_dimension_counts_the_empty_lists_written_for_it() -> None:
    """It decodes to no values whatever its other dimensions, yet writing it makes a text per row: a shape of a few
    wire bytes claiming 2**40 rows is refused before a row is written (it took ~70 bytes and 2 us per row)."""
    small = _empty_output(3, 0)
    assert answer_size(small, small.ByteSize()).elements == 4  # "[]" three times, then the list of them
    assert response_document(small, row_format=False) == {"outputs": [[], [], []]}
    assert response_document(small, row_format=True) == {"predictions": [[], [], []]}
    # Texts of every depth up to the zero dimension: 1 + 2 + 2*1 lists of lists, and 2*1*3 "[]".
    assert answer_size(_empty_output(2, 1, 3, 0, 5), 10).elements == 11
    huge = _empty_output(1 << 40, 0)
    with pytest.raises(InvalidArgumentError, match=r"output 'e': shape \[1099511627776, 0\] holds no values"):
        answer_size(huge, huge.ByteSize())
    # At the bound (one value's worth of filling, or the answer's wire bytes if more) it is still written.
    assert answer_size(_empty_output(MAX_FILLED_ELEMENTS - 1, 0), 10).elements == MAX_FILLED_ELEMENTS
    with pytest.raises(InvalidArgumentError, match="output 'e'"):
        answer_size(_empty_output(MAX_FILLED_ELEMENTS, 0), 10)
    assert answer_size(_empty_output(MAX_FILLED_ELEMENTS, 0), MAX_FILLED_ELEMENTS + 1).elements == (
        MAX_FILLED_ELEMENTS + 1
    )
