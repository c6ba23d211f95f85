"""The entry's PS ``lookup`` request, written straight to wire bytes (see core/proto_wire.py for why).

PredictRequest.model_spec = 1 (fixed per shard and version, so encoded once by the caller), .inputs = 2:
one int64 ``<table>_id`` tensor per table, its fids in ``tensor_content``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from monolith_serving.core import proto_wire
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2

Int64Array = npt.NDArray[np.int64]

_MODEL_SPEC = 1
_INPUTS = 2


def model_spec_field(name: str, version: int, signature_name: str) -> bytes:
    """PredictRequest field 1 (``model_spec``) pinning ``version``."""
    return proto_wire.length_delimited(_MODEL_SPEC, proto_wire.model_spec(name, version, signature_name))


def int64_input_field(name: bytes, values: Int64Array) -> bytes:
    """PredictRequest field 2 (one ``inputs`` map entry): ``name`` -> int64 [len(values)] tensor."""
    content = np.ascontiguousarray(values, dtype="<i8").tobytes()
    tensor = proto_wire.tensor_head(types_pb2.DT_INT64, (len(values),), len(content)) + content
    return proto_wire.map_entry_head(_INPUTS, name, len(tensor)) + tensor


def lookup_request(model_spec: bytes, inputs: Iterable[tuple[bytes, Int64Array]]) -> bytes:
    """A serialized PredictRequest: the pre-encoded ``model_spec_field`` plus one int64 input per pair."""
    return model_spec + b"".join(int64_input_field(name, values) for name, values in inputs)
