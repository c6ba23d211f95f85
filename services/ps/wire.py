"""The PS's lookup response, written straight to wire bytes (see core/proto_wire.py for why).

PredictResponse.outputs = 1 (``<table>_value`` float32 [n, dim] tensors), .model_spec = 2. Each table's rows
are copied exactly once, from the looked-up matrix into the response bytes (``bytes.join`` reads the numpy
buffer directly), where filling a TensorProto and serializing it copies them three times. The per-request
Python work is kept to a few varints: the model_spec and output-name bytes are cached.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from monolith_serving.core import proto_wire
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2

_OUTPUTS_TAG = proto_wire.tag(1, proto_wire.LENGTH_DELIMITED)
_MODEL_SPEC = 2
_VALUE_TAG = proto_wire.tag(2, proto_wire.LENGTH_DELIMITED)  # map entry value
_FLOAT_DTYPE = proto_wire.tag(1, proto_wire.VARINT) + proto_wire.varint(types_pb2.DT_FLOAT)
_SHAPE_TAG = proto_wire.tag(2, proto_wire.LENGTH_DELIMITED)  # TensorProto.tensor_shape
_DIM_TAG = proto_wire.tag(2, proto_wire.LENGTH_DELIMITED)  # TensorShapeProto.dim
_SIZE_TAG = proto_wire.tag(1, proto_wire.VARINT)  # Dim.size
_CONTENT_TAG = proto_wire.tag(4, proto_wire.LENGTH_DELIMITED)  # TensorProto.tensor_content
_MAX_CACHED = 256  # model_spec/key entries kept; cleared when exceeded (names and versions are few)

varint = proto_wire.varint


def _dim(size: int) -> bytes:
    payload = _SIZE_TAG + varint(size) if size else b""
    return _DIM_TAG + varint(len(payload)) + payload


class LookupResponseEncoder:
    """Serializes lookup answers; one per servicer (its caches are not shared across threads)."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, int, str], bytes] = {}
        self._keys: dict[str, bytes] = {}

    def _spec(self, model_name: str, version: int, signature_name: str) -> bytes:
        key = (model_name, version, signature_name)
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) >= _MAX_CACHED:
                self._specs.clear()
            spec = proto_wire.length_delimited(_MODEL_SPEC, proto_wire.model_spec(model_name, version, signature_name))
            self._specs[key] = spec
        return spec

    def _key(self, name: str) -> bytes:
        key = self._keys.get(name)
        if key is None:
            if len(self._keys) >= _MAX_CACHED:
                self._keys.clear()
            key = proto_wire.length_delimited(1, name.encode())
            self._keys[name] = key
        return key

    def encode(
        self, outputs: Mapping[str, npt.NDArray[np.float32]], model_name: str, version: int, signature_name: str
    ) -> bytes:
        """A serialized PredictResponse: ``outputs`` as float32 tensors, then the model_spec."""
        parts: list[bytes | memoryview] = []
        for name, array in outputs.items():
            matrix = np.ascontiguousarray(array, dtype="<f4")
            nbytes = matrix.nbytes
            dims = (
                b"".join([_dim(size) for size in matrix.shape])
                if matrix.ndim != 2
                else _dim(len(matrix)) + _dim(matrix.shape[1])
            )
            tensor_head = _FLOAT_DTYPE + _SHAPE_TAG + varint(len(dims)) + dims
            if nbytes:
                tensor_head += _CONTENT_TAG + varint(nbytes)
            key = self._key(name)
            value_size = len(tensor_head) + nbytes
            entry_size = len(key) + len(_VALUE_TAG) + len(varint(value_size)) + value_size
            parts.append(_OUTPUTS_TAG + varint(entry_size) + key + _VALUE_TAG + varint(value_size) + tensor_head)
            parts.append(matrix.reshape(-1).view(np.uint8).data)  # no copy: join reads the array's buffer
        parts.append(self._spec(model_name, version, signature_name))
        return b"".join(parts)


def lookup_response(
    outputs: Mapping[str, npt.NDArray[np.float32]], model_name: str, version: int, signature_name: str
) -> bytes:
    """One-off form of ``LookupResponseEncoder.encode`` (no caching)."""
    return LookupResponseEncoder().encode(outputs, model_name, version, signature_name)
