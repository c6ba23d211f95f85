"""TF Serving's REST JSON <-> the gRPC messages the REST gateway (``core.rest_gateway``) serves.

Request bodies: ``{"signature_name": ..., "instances": [...]}`` (row format: one element per example, either
a value of the signature's single input or an object of named inputs, stacked on a new batch dimension)
or ``{"inputs": ...}`` (columnar: one value, or an object of named values, each a whole tensor). A string
element ``{"b64": "..."}`` is bytes (padding optional and ASCII whitespace skipped, as absl::Base64Unescape takes
it). An empty ``signature_name`` is the default signature. Input dtypes come from the model's signature when the
entry tells us (GetModelMetadata); otherwise from the JSON itself: strings/b64 → DT_STRING, booleans → DT_BOOL,
integers only → DT_INT64, any float → DT_FLOAT. A value the dtype cannot hold unchanged is refused as TF Serving
refuses it (a JSON float for an integer dtype, a number for DT_BOOL); booleans are taken as 0/1 for numbers.
The body is one JSON document; what follows it is not read (RapidJSON's kParseStopWhenDoneFlag).

Numbers are checked as TF Serving's parser (RapidJSON) checks them: a literal too big for a double (``1e999``,
an integer of more than 4300 digits) is a JSON parse error; a double too big for the input's floating dtype
becomes infinite there, as RapidJSON's ``GetFloat`` casts it (``1e39`` as DT_FLOAT is ``inf``);
``NaN``/``Infinity``/``-Infinity`` are accepted. Of a key given twice in one object, the first counts, as
RapidJSON's ``FindMember`` finds it (TF Serving's row-format reading walks an instance's members instead, reading a
repeated input twice).
Text must be valid Unicode: a string holding an unpaired surrogate escape (``"\\ud800"``), which has no UTF-8
form, is refused naming its field.

Cost and the GIL: nested lists are walked one depth at a time and converted to numpy with C-level iteration
(``map``, ``chain``, slice assignment), not a Python call per element: a 6 MB body of numbers decodes in ~0.3-0.5 s.
The gateway decodes large bodies on a thread, where a long C call would still hold the GIL and so stall the
event loop: every pass over the leaves goes in steps of ``_STEP_ELEMENTS``, and ``parse_predict_body(...,
on_thread=True)`` has the JSON parser call back into Python for every integer too (as it does for every float
to check its range), a point where the GIL can pass, at ~65 ns per integer.

Cancelling: a thread cannot be stopped from outside, and a decode whose request was already answered (its deadline
passed) would otherwise run on, holding a decode thread and its body's bytes. So decoding checks a
:class:`DecodeCancel` at every number the parser hands back and between passes of the conversion (~20 ns per
number, ~25% of parsing a body of integers, ~4% of floats), and stops with :class:`DecodeCancelled` once it is set.

Responses: row requests get ``{"predictions": ...}`` (a list per example; objects when there are several
outputs), columnar ones ``{"outputs": ...}``, written as text so that numbers are spelled as TF Serving spells
them (``_float_step_texts``). DT_STRING values are emitted as text when they are valid UTF-8 and the output name
does not end in ``_bytes``, else as ``{"b64": ...}``. Model metadata prints every field without presence, as TF
Serving's JSON printer does. The gateway writes a large answer on a thread too (``answer_size`` tells how large,
without decoding it): every pass over its values goes in steps of ``_WRITE_STEP_ELEMENTS`` (formatting a float
and reading it back costs ~1 us, so a pass holds the GIL ~1-2 ms), checking a :class:`DecodeCancel` before each.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.core.tensor_codec import (
    MAX_FILLED_ELEMENTS,
    MAX_RANK,
    TensorCodecError,
    dtype_name,
    from_tensor_proto,
    numpy_dtype_for,
    to_tensor_proto,
)
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

SIGNATURE_DEF_FIELD = "signature_def"
# Leaf types the numeric dtypes take (booleans too, as 0/1, when the signature asks for numbers).
_NUMBER_TYPES = frozenset({int, float, bool})
_STRING_TYPES = frozenset({str, dict})  # dict: {"b64": ...}
# Elements per C-level pass: one holds the GIL (so, on a decode thread, the event loop) ~1-3 ms.
_STEP_ELEMENTS = 1 << 16
# Elements per pass of writing an answer: formatting and reading back 4096 floats holds the GIL ~1-2 ms.
_WRITE_STEP_ELEMENTS = 1 << 12
# An answer's share of the byte budget per element beyond its wire bytes (``AnswerSize.budget_bytes``).
_BUDGET_BYTES_PER_ELEMENT = 8
_SHORT_FLOAT = "{:g}"  # printf's %g: 6 significant digits, what absl::StrCat writes for a float or double
_BOOL_TEXT = {True: "true", False: "false"}
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace (RFC 8259), what json.loads skips
_NO_ASCII_WHITESPACE = str.maketrans("", "", " \t\n\v\f\r")  # what absl::Base64Unescape skips in base64


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """The model part of a REST path: name plus at most one of version / label."""

    name: str
    version: int | None = None
    label: str | None = None

    def to_spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.name, signature_name=signature_name)
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        return spec


@dataclass(frozen=True)
class PredictBody:
    signature_name: str
    row_format: bool
    payload: Any  # the "instances" or "inputs" value


class _NumberTooBig(ValueError):
    """Raised from json.loads' parse_float hook: a float literal beyond the double range."""


class DecodeCancelled(Exception):
    """A decode stopped early: its :class:`DecodeCancel` was set, so nobody waits for its result."""


class DecodeCancel:
    """Set (from any thread) when nobody waits for a decode any more; the decode stops at its next check.
    Thread-safe: one flag, only ever set, read under the GIL."""

    __slots__ = ("is_set",)

    def __init__(self) -> None:
        self.is_set = False

    def set(self) -> None:
        self.is_set = True

    def check(self) -> None:
        if self.is_set:
            raise DecodeCancelled


def _number_hooks(cancel: DecodeCancel) -> tuple[Callable[[str], int], Callable[[str], float]]:
    """json.loads' ``parse_int`` and ``parse_float``, each checking ``cancel`` first (inlined: ~20 ns a number)."""

    def parse_int(text: str) -> int:
        if cancel.is_set:
            raise DecodeCancelled
        return int(text)  # a Python-level hook: the parser gives the GIL a chance to pass per integer

    def parse_float(text: str) -> float:
        """Python's parser reads ``1e999`` as infinity, RapidJSON refuses it (``Infinity`` is parse_constant's)."""
        if cancel.is_set:
            raise DecodeCancelled
        value = float(text)
        if math.isinf(value):
            raise _NumberTooBig(f"Number too big to be stored in double: {reprlib.repr(text)}")
        return value

    return parse_int, parse_float


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # json.loads accepts "\ud800" (an unpaired surrogate escape); it is text no UTF-8 can hold.
        raise InvalidArgumentError(
            f"{what}: {reprlib.repr(text)} is not valid Unicode (an unpaired surrogate escape)"
        ) from None


def _json_document(body: bytes, parse_int: Callable[[str], int] | None, parse_float: Callable[[str], float]) -> Any:
    """The JSON value ``body`` starts with. What follows it is not read: TF Serving's parser stops at the end of the
    document (RapidJSON's kParseStopWhenDoneFlag), so a client's trailing bytes never failed a request there."""
    try:
        # UTF-8 only, as RapidJSON reads it (a BOM skipped); "surrogatepass" as json.loads(bytes) decodes, so an
        # encoded surrogate reaches _utf8 and is refused naming its field.
        text = body.decode("utf-8-sig", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"JSON Parse error: the body is not UTF-8: {exc}") from None
    leading = _JSON_WHITESPACE.match(text)  # always matches (the empty string, at least)
    start = leading.end() if leading else 0
    if start == len(text):
        raise InvalidArgumentError("JSON Parse error: The document is empty")
    decoder = json.JSONDecoder(parse_int=parse_int, parse_float=parse_float, object_pairs_hook=_first_key_wins)
    document, _end = decoder.raw_decode(text, start)
    return document


def _first_key_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as TF Serving reads it: of a key given twice, the first value (json's own dict keeps the last)."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        document.setdefault(key, value)
    return document


def parse_predict_body(body: bytes, *, on_thread: bool = False, cancel: DecodeCancel | None = None) -> PredictBody:
    """``on_thread``: decoding runs beside an event loop; let the GIL pass at every number, not only floats
    (json.loads of a body of small integers takes ~3x longer, but never holds the GIL for long).
    Raises DecodeCancelled once ``cancel`` is set."""
    parse_int, parse_float = _number_hooks(cancel or DecodeCancel())
    try:
        document = _json_document(body, parse_int if on_thread else None, parse_float)
    except (json.JSONDecodeError, _NumberTooBig) as exc:
        raise InvalidArgumentError(f"JSON Parse error: {exc}") from None
    except RecursionError:
        raise InvalidArgumentError("JSON Parse error: the document is nested too deeply") from None
    except ValueError as exc:
        # int("9" * 5000): "Exceeds the limit (4300 digits) for integer string conversion: value has 5000
        # digits; use sys.set_int_max_str_digits() ..." -- the advice after ';' is for us, not the client.
        raise InvalidArgumentError(f"JSON Parse error: number too big: {str(exc).partition(';')[0]}") from None
    if not isinstance(document, dict):
        raise InvalidArgumentError("JSON Value: request body must be an object")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances == has_inputs:
        raise InvalidArgumentError('JSON object: must have exactly one of "instances" (row format) or "inputs"')
    signature = document.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidArgumentError('"signature_name" must be a string')
    _utf8(signature, '"signature_name"')
    signature = signature or DEFAULT_SIGNATURE  # TF Serving reads an empty name as the default signature
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidArgumentError('"instances" must be a non-empty list')
        return PredictBody(signature, True, instances)
    return PredictBody(signature, False, document["inputs"])


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _steps(count: int, step: int, cancel: DecodeCancel) -> Iterator[int]:
    """``range(0, count, step)``, checking ``cancel`` before each pass."""
    for start in range(0, count, step):
        cancel.check()
        yield start


def _collect(fn: Callable[[Any], Any], items: list[Any], cancel: DecodeCancel) -> set[Any]:
    """``{fn(item) for item in items}``, in C-level passes of ``_STEP_ELEMENTS``."""
    found: set[Any] = set()
    for start in _steps(len(items), _STEP_ELEMENTS, cancel):
        found.update(map(fn, items[start : start + _STEP_ELEMENTS]))
    return found


def _concat(lists: list[list[Any]], length: int, cancel: DecodeCancel) -> list[Any]:
    """The items of ``lists`` (each ``length`` long) in one list, in C-level passes of ~``_STEP_ELEMENTS``."""
    if len(lists) == 1:
        return lists[0]
    rows = max(1, _STEP_ELEMENTS // max(length, 1))
    items: list[Any] = []
    for start in _steps(len(lists), rows, cancel):
        items.extend(chain.from_iterable(lists[start : start + rows]))
    return items


def _flatten(value: Any, name: str, cancel: DecodeCancel) -> tuple[list[Any], tuple[int, ...], set[type]]:
    """Leaves in row-major order, the shape of a rectangular nested list, and the leaves' types.

    One depth at a time: every list at a depth must have the same length, and hold either only lists or
    only leaves (else the lists are ragged).
    """
    if not isinstance(value, list):
        return [value], (), {type(value)}
    shape: list[int] = []
    lists: list[list[Any]] = [value]  # every list at depth len(shape)
    while True:
        if len(shape) == MAX_RANK:
            raise InvalidArgumentError(
                f"input {name!r}: lists nested deeper than {MAX_RANK} (the most dimensions a tensor can have here)"
            )
        lengths = _collect(len, lists, cancel)
        if len(lengths) != 1:
            raise InvalidArgumentError(f"input {name!r}: nested lists have different lengths (ragged tensor)")
        shape.append(lengths.pop())
        items = _concat(lists, shape[-1], cancel)
        types = _collect(type, items, cancel)
        if list not in types:
            return items, tuple(shape), types
        if len(types) != 1:
            raise InvalidArgumentError(f"input {name!r}: nested lists have different lengths (ragged tensor)")
        lists = items


def _infer_dtype(leaves: list[Any], types: set[type], name: str) -> int:
    if not types:
        return types_pb2.DT_FLOAT
    if types <= _STRING_TYPES and (dict not in types or all(_is_b64(v) for v in leaves if isinstance(v, dict))):
        return types_pb2.DT_STRING
    if types == {bool}:
        return types_pb2.DT_BOOL
    if types == {int}:
        return types_pb2.DT_INT64
    if types <= {int, float}:
        return types_pb2.DT_FLOAT
    raise InvalidArgumentError(f"input {name!r}: mixes strings, numbers and booleans")


def _string_leaf(value: Any, name: str) -> bytes:
    if isinstance(value, str):
        return _utf8(value, f"input {name!r}: string")
    if _is_b64(value):
        encoded = value["b64"]
        if not isinstance(encoded, str):
            raise InvalidArgumentError(f'input {name!r}: "b64" must hold a string')
        encoded = encoded.translate(_NO_ASCII_WHITESPACE)  # line-wrapped (MIME) base64, as absl skips it
        if "=" not in encoded:
            # TF Serving (absl::Base64Unescape) takes base64 without its padding; padding given must be right.
            encoded += "=" * (-len(encoded) % 4)
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgumentError(f'input {name!r}: "b64" value is not valid base64') from None
    # reprlib: a client's value may be huge or deeply nested (a full repr could even hit the recursion limit).
    raise InvalidArgumentError(f'input {name!r}: DT_STRING needs strings or {{"b64": ...}}, got {reprlib.repr(value)}')


def _string_leaves(leaves: list[Any], types: set[type], name: str, cancel: DecodeCancel) -> list[bytes]:
    if types == {str}:
        encoded: list[bytes] = []
        try:
            for start in _steps(len(leaves), _STEP_ELEMENTS, cancel):
                encoded.extend(map(str.encode, leaves[start : start + _STEP_ELEMENTS]))
            return encoded
        except UnicodeEncodeError:
            pass  # the loop below names the input and the string
    return [_string_leaf(v, name) for v in leaves]


def _to_array(leaves: list[Any], dtype: np.dtype[Any], cancel: DecodeCancel) -> Any:
    """``np.asarray(leaves, dtype)`` (same conversions, same errors), in C-level passes of ``_STEP_ELEMENTS``."""
    array = np.empty(len(leaves), dtype=dtype)
    for start in _steps(len(leaves), _STEP_ELEMENTS, cancel):
        array[start : start + _STEP_ELEMENTS] = leaves[start : start + _STEP_ELEMENTS]
    return array


def _numeric_array(leaves: list[Any], dt: int, cancel: DecodeCancel) -> Any:
    """``leaves`` (numbers and booleans) as a flat array of ``dt``'s numpy dtype."""
    target = numpy_dtype_for(dt)
    if target.kind != "f":
        return _to_array(leaves, target, cancel)
    # Through float64, as a Python number converts; a value beyond a narrower dtype's range becomes infinite, as
    # TF Serving's static_cast<float>(GetDouble()) makes it.
    wide = _to_array(leaves, np.dtype(np.float64), cancel)
    with np.errstate(over="ignore"):
        return wide.astype(target, copy=False)


def _check_exact(leaves: list[Any], types: set[type], dt: int, name: str) -> None:
    """Refuses what numpy would convert by changing it, as TF Serving refuses it: a JSON float for an integer
    dtype (``2.5`` was truncated to 2; RapidJSON reads ``1.0`` as a double, so it is refused too) and a number
    for DT_BOOL (``2`` became true). Booleans for numbers stay accepted, as 0 and 1: nothing is lost."""
    if dt == types_pb2.DT_BOOL and types != {bool}:
        value = next(v for v in leaves if type(v) is not bool)
        raise InvalidArgumentError(f"input {name!r}: DT_BOOL needs true or false, got {reprlib.repr(value)}")
    if float in types and numpy_dtype_for(dt).kind in "iu":
        value = next(v for v in leaves if type(v) is float)
        raise InvalidArgumentError(f"input {name!r}: {value!r} is not an integer ({dtype_name(dt)})")


def json_to_tensor(value: Any, name: str, datatype: int | None, cancel: DecodeCancel | None = None) -> Any:
    """One JSON value (nested lists of leaves) → TensorProto of ``datatype`` (inferred when None).
    Raises DecodeCancelled once ``cancel`` is set."""
    cancel = cancel or DecodeCancel()
    leaves, shape, types = _flatten(value, name, cancel)
    dt = datatype if datatype is not None else _infer_dtype(leaves, types, name)
    if dt == types_pb2.DT_STRING:
        array = np.empty(len(leaves), dtype=object)
        array[:] = _string_leaves(leaves, types, name, cancel)
    else:
        if not types <= _NUMBER_TYPES:
            raise InvalidArgumentError(f"input {name!r}: {dtype_name(dt)} needs numbers or booleans")
        _check_exact(leaves, types, dt, name)
        try:
            array = _numeric_array(leaves, dt, cancel)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgumentError(f"input {name!r}: cannot convert to {dtype_name(dt)}: {exc}") from None
    try:
        return to_tensor_proto(array.reshape(shape), datatype=dt)
    except TensorCodecError as exc:
        raise InvalidArgumentError(exc.message) from None


def _single_input_name(signature_inputs: Mapping[str, int] | None, what: str) -> str:
    if signature_inputs is None:
        raise InvalidArgumentError(
            f"{what} without input names needs the model's signature, which the entry did not provide; "
            'name the inputs ({"input_name": value})'
        )
    if len(signature_inputs) != 1:
        raise InvalidArgumentError(
            f"{what} without input names needs a signature with exactly one input; it has "
            f"{len(signature_inputs)}: {', '.join(sorted(signature_inputs))}"
        )
    return next(iter(signature_inputs))


def build_predict_request(
    model: ModelRef, body: PredictBody, signature_inputs: Mapping[str, int] | None, cancel: DecodeCancel | None = None
) -> predict_pb2.PredictRequest:
    """The PredictRequest a REST body means; ``signature_inputs`` maps input name → DataType, if known.
    Raises DecodeCancelled once ``cancel`` is set."""
    cancel = cancel or DecodeCancel()
    columns: dict[str, Any] = {}
    if body.row_format:
        instances: list[Any] = body.payload
        if _is_named(instances[0]):
            keys = set(instances[0])
            for index, instance in enumerate(instances):
                if not _is_named(instance) or set(instance) != keys:
                    raise InvalidArgumentError(
                        f"instance {index}: every instance must be an object with the same keys {sorted(keys)}"
                    )
                if not index % _STEP_ELEMENTS:
                    cancel.check()
            columns = {}
            for key in keys:
                cancel.check()
                columns[key] = [instance[key] for instance in instances]
        else:
            if any(_is_named(instance) for instance in instances):
                raise InvalidArgumentError("instances mix named (object) and unnamed values")
            columns = {_single_input_name(signature_inputs, "instances"): instances}
    elif _is_named(body.payload):
        columns = dict(body.payload)
        if not columns:
            raise InvalidArgumentError('"inputs" object is empty')
    else:
        columns = {_single_input_name(signature_inputs, "inputs"): body.payload}
    for name in columns:
        _utf8(name, "input name")
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(model.to_spec(body.signature_name))
    for name, value in columns.items():
        datatype = signature_inputs.get(name) if signature_inputs else None
        request.inputs[name].CopyFrom(json_to_tensor(value, name, datatype, cancel))
    return request


def _string_text(value: bytes) -> str:
    try:
        return json.dumps(value.decode(), ensure_ascii=False)
    except UnicodeDecodeError:
        return _b64_text(value)  # TF Serving would write the raw bytes, which is not JSON: {"b64"} is


def _b64_text(value: bytes) -> str:
    return '{"b64": "' + base64.b64encode(value).decode() + '"}'


@dataclass(frozen=True)
class AnswerSize:
    """What writing a PredictResponse as JSON takes. Time: ~1-1.4 us per float or string element (formatted and
    read back, or escaped), ~0.2 us per integer, ~0.05 us per boolean, ~6 ns per byte of long strings. Memory:
    ~100-175 bytes per element (a Python str per value, float64 copies) and ~5x a long string's bytes."""

    elements: int  # leaf values written (bounded as ``answer_size`` says)
    wire_bytes: int  # the serialized response

    @property
    def budget_bytes(self) -> int:
        """Its share of the REST byte budget, whose bytes stand for ~10-25x as much memory while a body is decoded:
        the wire bytes plus ``_BUDGET_BYTES_PER_ELEMENT`` per element keeps that ratio (float32 scores: ~13x;
        an output filled from one value, a few wire bytes for millions of elements, is not let through as free)."""
        return self.wire_bytes + _BUDGET_BYTES_PER_ELEMENT * self.elements


def answer_size(response: predict_pb2.PredictResponse, wire_bytes: int) -> AnswerSize:
    """Read from the outputs' shapes, without decoding them. A tensor counts its elements, at most what decoding it
    can yield (its values are on the wire, or one value fills at most ``MAX_FILLED_ELEMENTS``): a shape claiming
    more fails there, and is not refused here for its size. A tensor with a zero dimension decodes to no values
    whatever its other dimensions (22 wire bytes can claim ``[2**40, 0]``), yet is written as nested empty lists,
    one text per row: it counts those rows (``_empty_tensor_rows``), and one with more than that same bound is
    refused here, INVALID_ARGUMENT naming it, before a row is written."""
    most = max(MAX_FILLED_ELEMENTS, wire_bytes)
    elements = 0
    for name, tensor in sorted(response.outputs.items()):
        sizes = [dim.size for dim in tensor.tensor_shape.dim]
        if 0 in sizes:
            rows = _empty_tensor_rows(sizes, most)
            if rows > most:
                raise InvalidArgumentError(
                    f"output {name!r}: shape {sizes} holds no values but would be written as more than {most} "
                    "empty lists; the model's answer is refused"
                )
            elements += rows
            continue
        count = 1
        for size in sizes:
            count = min(count * max(size, 1), most + 1)
        elements += min(count, most)
    return AnswerSize(elements=elements, wire_bytes=wire_bytes)


def _empty_tensor_rows(sizes: list[int], most: int) -> int:
    """The texts ``_nest`` writes for a tensor whose dimension ``sizes`` include a 0: at each depth up to the first
    zero dimension, one per element of the dimensions before it (``[3, 0]``: ``[]`` three times, then the list of
    them). Counted up to ``most + 1``."""
    rows = 0
    per_depth = 1
    for size in sizes:
        rows = min(rows + per_depth, most + 1)
        if size == 0:
            break
        per_depth = min(per_depth * max(size, 1), most + 1)
    return rows


def _writing_steps(count: int, cancel: DecodeCancel) -> Iterator[slice]:
    """``range(count)`` in slices of ``_WRITE_STEP_ELEMENTS``, checking ``cancel`` before each."""
    for start in _steps(count, _WRITE_STEP_ELEMENTS, cancel):
        yield slice(start, start + _WRITE_STEP_ELEMENTS)


def _stepped_texts(
    flat: npt.NDArray[Any], spell_step: Callable[[npt.NDArray[Any]], Iterable[str]], cancel: DecodeCancel
) -> list[str]:
    """The texts ``spell_step`` writes for ``flat``, given it in passes of ``_WRITE_STEP_ELEMENTS``."""
    texts: list[str] = []
    for part in _writing_steps(len(flat), cancel):
        texts.extend(spell_step(flat[part]))
    return texts


def _float_step_texts(values: npt.NDArray[Any]) -> list[str]:
    """Floats as TF Serving writes them (json_tensor.cc, WriteDecimal): printf's ``%g`` (6 significant digits)
    when that reads back as the same value in the tensor's own precision, else ``%.9g`` (float) or ``%.17g``
    (double); ``.0`` appended when the text has neither ``.`` nor an exponent; NaN, Infinity and -Infinity bare.
    So a DT_FLOAT 0.1 is ``0.1``, not the double nearest the float (``0.10000000149011612``)."""
    narrow = values.dtype != np.float64
    exact = values.astype(np.float32) if narrow else values  # DT_HALF is exact in float32
    wide: list[float] = exact.tolist()  # Python floats: a float32 widens to the double of the same value
    texts = list(map(_SHORT_FLOAT.format, wide))
    with np.errstate(over="ignore", invalid="ignore"):
        # Read back through a double, as a client that parses JSON numbers as doubles does; for a float this
        # differs from TF Serving's strtof only for a decimal within 2^-53 (relative) of a point halfway between
        # two floats.
        read_back = np.array(texts, dtype=np.float64)
        if narrow:
            read_back = read_back.astype(np.float32)
    finite = np.isfinite(exact)
    full = "{:.9g}" if narrow else "{:.17g}"
    inexact = np.flatnonzero(finite & (read_back != exact)).tolist()
    for index, text in zip(inexact, map(full.format, map(wide.__getitem__, inexact)), strict=True):
        texts[index] = text
    texts = [text if "." in text or "e" in text else text + ".0" for text in texts]
    for index in np.flatnonzero(~finite).tolist():
        value = wide[index]
        texts[index] = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    return texts


def _mapped_texts(flat: npt.NDArray[Any], spell: Callable[[Any], str], cancel: DecodeCancel) -> list[str]:
    """``list(map(spell, flat.tolist()))`` in passes of ``_WRITE_STEP_ELEMENTS``."""
    return _stepped_texts(flat, lambda part: map(spell, part.tolist()), cancel)


def _leaf_texts(array: npt.NDArray[Any], name: str, dtype: int, cancel: DecodeCancel) -> list[str]:
    """Each value of ``array``, row-major, as TF Serving writes it."""
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        as_b64 = name.endswith("_bytes")  # TF Serving's rule: such outputs hold bytes, not text
        return _mapped_texts(flat, _b64_text if as_b64 else _string_text, cancel)
    kind = flat.dtype.kind
    if kind == "f":
        return _stepped_texts(flat, _float_step_texts, cancel)
    if kind == "b":
        return _mapped_texts(flat, _BOOL_TEXT.__getitem__, cancel)
    if kind in "iu":
        return _mapped_texts(flat, str, cancel)  # int64 and uint64 as exact numbers, as TF Serving
    raise InvalidArgumentError(f"output {name!r}: {dtype_name(dtype)} tensors have no JSON form")


def _joined(texts: list[str], cancel: DecodeCancel) -> str:
    """``", ".join(texts)``, a long list in passes of ``_WRITE_STEP_ELEMENTS`` (one join is one C call)."""
    if len(texts) <= _WRITE_STEP_ELEMENTS:
        return ", ".join(texts)
    return ", ".join([", ".join(texts[part]) for part in _writing_steps(len(texts), cancel)])


def _nest(texts: list[str], shape: tuple[int, ...], levels: int, cancel: DecodeCancel) -> list[str]:
    """Row-major leaf texts of a tensor of ``shape`` grouped into JSON arrays over its last ``levels`` dimensions:
    one text per element of the dimensions before them."""
    for depth in range(len(shape) - 1, len(shape) - 1 - levels, -1):
        size = shape[depth]
        rows = range(math.prod(shape[:depth]))
        per_step = max(1, _WRITE_STEP_ELEMENTS // max(size, 1))  # rows of ~_WRITE_STEP_ELEMENTS texts per pass
        nested: list[str] = []
        for first in _steps(len(rows), per_step, cancel):
            nested.extend(
                "[" + _joined(texts[i * size : (i + 1) * size], cancel) + "]" for i in rows[first : first + per_step]
            )
        texts = nested
    return texts


def _tensor_texts(proto: Any, name: str, row_format: bool, cancel: DecodeCancel) -> list[str]:
    """A TensorProto as JSON: its whole value (one text), or for ``row_format`` one text per row of dimension 0."""
    try:
        array = from_tensor_proto(proto, name)
    except TensorCodecError as exc:
        raise InvalidArgumentError(exc.message) from None
    levels = array.ndim - 1 if row_format else array.ndim
    return _nest(_leaf_texts(array, name, proto.dtype, cancel), array.shape, levels, cancel)


def predict_response_text(
    response: predict_pb2.PredictResponse, row_format: bool, cancel: DecodeCancel | None = None
) -> str:
    """The JSON answer to a REST Predict, as TF Serving writes it: ``{"predictions": [...]}`` for a row request
    (a value per row; with several outputs, an object of them per row), ``{"outputs": ...}`` for a columnar one
    (the value; with several outputs, an object of them). Written as text, not through json.dumps, to spell
    numbers as TF Serving does (``_float_step_texts``). Raises DecodeCancelled once ``cancel`` is set."""
    cancel = cancel or DecodeCancel()
    names = sorted(response.outputs)
    if not names:
        raise InvalidArgumentError("Cannot convert empty tensor map to JSON: the model's answer has no outputs")
    if not row_format:
        values = [_tensor_texts(response.outputs[name], name, False, cancel)[0] for name in names]
        if len(values) == 1:
            return '{"outputs": ' + values[0] + "}"
        return '{"outputs": {' + ", ".join(f"{json.dumps(n)}: {v}" for n, v in zip(names, values, strict=True)) + "}}"
    rows: dict[str, list[str]] = {}
    for name in names:
        tensor = response.outputs[name]
        if not tensor.tensor_shape.dim:
            raise InvalidArgumentError(f'output {name!r} is a scalar; use the columnar "inputs" format')
        rows[name] = _tensor_texts(tensor, name, True, cancel)
    sizes = {name: len(texts) for name, texts in rows.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidArgumentError(
            f'outputs have different batch sizes {sizes}; row format needs one; use the columnar "inputs" format'
        )
    if len(rows) == 1:
        (only,) = rows.values()
        return '{"predictions": [' + _joined(only, cancel) + "]}"
    keys = {name: json.dumps(name) + ": " for name in names}
    batch = range(next(iter(sizes.values()), 0))
    objects: list[str] = []
    for part in _writing_steps(len(batch), cancel):
        objects.extend("{" + ", ".join(keys[name] + rows[name][i] for name in names) + "}" for i in batch[part])
    return '{"predictions": [' + _joined(objects, cancel) + "]}"


def signature_inputs_from_metadata(
    response: get_model_metadata_pb2.GetModelMetadataResponse, signature_name: str
) -> dict[str, int] | None:
    """Input name → DataType of ``signature_name``, or None when the metadata does not describe it."""
    packed = response.metadata.get(SIGNATURE_DEF_FIELD)
    if packed is None:
        return None
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if not packed.Unpack(signatures) or signature_name not in signatures.signature_def:
        return None
    inputs = signatures.signature_def[signature_name].inputs
    return {name: int(info.dtype) for name, info in inputs.items()}


def model_status_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict[str, Any]:
    return _message_json(response)


def model_metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict[str, Any]:
    """TF Serving's shape: ``{"model_spec": ..., "metadata": {"signature_def": <SignatureDefMap>}}``, every field
    without presence printed, empty ones included (``"signature_name": ""``, a dim's ``"name": ""``,
    ``"unknown_rank": false``), under its .proto name."""
    metadata: dict[str, Any] = {}
    for key, packed in sorted(response.metadata.items()):
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if packed.Unpack(signatures):
            metadata[key] = _message_json(signatures)
        else:
            metadata[key] = _message_json(packed)
    return {"model_spec": _message_json(response.model_spec), "metadata": metadata}


def _message_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
