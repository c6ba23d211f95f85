"""The entry's PS ``lookup`` request, written straight to wire bytes (see core/proto_wire.py for why).

PredictRequest.model_spec = 1 (fixed per shard and version, so encoded once by the caller), .inputs = 2:
one int64 ``<table>_id`` tensor per table, its fids in ``tensor_content``. Tags are precomputed and each
input costs a handful of small varints: this runs for every shard of every Predict.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from monolith_serving.core import proto_wire
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2

Int64Array = npt.NDArray[np.int64]

_LEN = proto_wire.LENGTH_DELIMITED
_MODEL_SPEC = 1
_INPUTS_TAG = proto_wire.tag(2, _LEN)
_VALUE_TAG = proto_wire.tag(2, _LEN)  # map entry value
_INT64_DTYPE = proto_wire.tag(1, proto_wire.VARINT) + proto_wire.varint(types_pb2.DT_INT64)
_SHAPE_TAG = proto_wire.tag(2, _LEN)  # TensorProto.tensor_shape
_DIM_TAG = proto_wire.tag(2, _LEN)  # TensorShapeProto.dim
_SIZE_TAG = proto_wire.tag(1, proto_wire.VARINT)  # Dim.size
_CONTENT_TAG = proto_wire.tag(4, _LEN)  # TensorProto.tensor_content

varint = proto_wire.varint


def model_spec_field(name: str, version: int, signature_name: str) -> bytes:
    """PredictRequest field 1 (``model_spec``) pinning ``version``."""
    return proto_wire.length_delimited(_MODEL_SPEC, proto_wire.model_spec(name, version, signature_name))


def input_key(name: str) -> bytes:
    """The encoded key of an ``inputs`` map entry (cache it: it is the same for every request)."""
    return proto_wire.length_delimited(1, name.encode())


def int64_input_field(key: bytes, values: Int64Array) -> bytes:
    """PredictRequest field 2 (one ``inputs`` map entry): ``key`` (from ``input_key``) -> int64 [n] tensor."""
    content = np.ascontiguousarray(values, dtype="<i8").tobytes()
    if content:
        size = _SIZE_TAG + varint(len(values))
        dim = _DIM_TAG + varint(len(size)) + size
        head = _INT64_DTYPE + _SHAPE_TAG + varint(len(dim)) + dim + _CONTENT_TAG + varint(len(content))
    else:
        dim = _DIM_TAG + b"\x00"  # proto3 leaves a zero size out: an empty Dim
        head = _INT64_DTYPE + _SHAPE_TAG + varint(len(dim)) + dim
    tensor_size = len(head) + len(content)
    value_size = varint(tensor_size)
    entry_size = len(key) + len(_VALUE_TAG) + len(value_size) + tensor_size
    return b"".join((_INPUTS_TAG, varint(entry_size), key, _VALUE_TAG, value_size, head, content))


def lookup_request(model_spec: bytes, inputs: Iterable[tuple[bytes, Int64Array]]) -> bytes:
    """A serialized PredictRequest: the pre-encoded ``model_spec_field`` plus one int64 input per
    (``input_key``, fids) pair."""
    return model_spec + b"".join([int64_input_field(key, values) for key, values in inputs])
