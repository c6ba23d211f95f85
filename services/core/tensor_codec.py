"""numpy arrays <-> tensorflow.TensorProto.

Numeric tensors are always encoded through ``tensor_content`` (raw little-endian bytes): building the
typed repeated fields from Python costs ~70x more. Decoding accepts both encodings, as TF Serving does,
including its rule that a typed field holding a single value fills the whole shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2

TensorProto = tensor_pb2.TensorProto


class TensorCodecError(InvalidArgumentError):
    """A tensor cannot be decoded or encoded; the message names the tensor."""


@dataclass(frozen=True)
class _DtypeInfo:
    numpy_dtype: np.dtype[Any]
    typed_field: str


_BY_DATATYPE: dict[int, _DtypeInfo] = {
    types_pb2.DT_FLOAT: _DtypeInfo(np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: _DtypeInfo(np.dtype("<f8"), "double_val"),
    types_pb2.DT_INT32: _DtypeInfo(np.dtype("<i4"), "int_val"),
    types_pb2.DT_UINT8: _DtypeInfo(np.dtype("u1"), "int_val"),
    types_pb2.DT_INT16: _DtypeInfo(np.dtype("<i2"), "int_val"),
    types_pb2.DT_INT8: _DtypeInfo(np.dtype("i1"), "int_val"),
    types_pb2.DT_UINT16: _DtypeInfo(np.dtype("<u2"), "int_val"),
    types_pb2.DT_STRING: _DtypeInfo(np.dtype(object), "string_val"),
    types_pb2.DT_INT64: _DtypeInfo(np.dtype("<i8"), "int64_val"),
    types_pb2.DT_BOOL: _DtypeInfo(np.dtype("?"), "bool_val"),
    types_pb2.DT_HALF: _DtypeInfo(np.dtype("<f2"), "half_val"),
    types_pb2.DT_UINT32: _DtypeInfo(np.dtype("<u4"), "uint32_val"),
    types_pb2.DT_UINT64: _DtypeInfo(np.dtype("<u8"), "uint64_val"),
    types_pb2.DT_COMPLEX64: _DtypeInfo(np.dtype("<c8"), "scomplex_val"),
    types_pb2.DT_COMPLEX128: _DtypeInfo(np.dtype("<c16"), "dcomplex_val"),
}

_BY_NUMPY_KIND: dict[str, int] = {
    info.numpy_dtype.newbyteorder("=").str if info.numpy_dtype != np.dtype(object) else "O": dt
    for dt, info in _BY_DATATYPE.items()
}


def dtype_name(datatype: int) -> str:
    try:
        return str(types_pb2.DataType.Name(datatype))
    except ValueError:
        return f"unknown DataType {datatype}"


def numpy_dtype_for(datatype: int) -> np.dtype[Any]:
    """The numpy dtype that a tensor of ``datatype`` decodes to; object for DT_STRING."""
    info = _BY_DATATYPE.get(datatype)
    if info is None:
        raise TensorCodecError(f"unsupported dtype {dtype_name(datatype)}")
    return info.numpy_dtype


def datatype_for(array: npt.NDArray[Any]) -> int:
    """The DataType of a numpy array; bytes/str/object arrays are DT_STRING."""
    kind = array.dtype
    if kind.kind in ("O", "S", "U"):
        return types_pb2.DT_STRING
    datatype = _BY_NUMPY_KIND.get(kind.newbyteorder("=").str)
    if datatype is None:
        raise TensorCodecError(f"no TensorProto dtype for numpy dtype {kind}")
    return datatype


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TensorCodecError(f"string tensor element of type {type(value).__name__} is not bytes or str")


def to_tensor_proto(array: Any, *, datatype: int | None = None) -> tensor_pb2.TensorProto:
    """Encodes ``array`` (anything np.asarray accepts) as a TensorProto.

    Numeric data goes into ``tensor_content``; strings into ``string_val``.
    """
    arr = np.asarray(array)
    if datatype is None:
        datatype = datatype_for(arr)
    info = _BY_DATATYPE.get(datatype)
    if info is None:
        raise TensorCodecError(f"unsupported dtype {dtype_name(datatype)}")
    proto = tensor_pb2.TensorProto(dtype=cast(types_pb2.DataType, datatype))
    dims = proto.tensor_shape.dim
    for size in arr.shape:
        dims.add(size=size)
    if datatype == types_pb2.DT_STRING:
        proto.string_val.extend(_as_bytes(v) for v in arr.reshape(-1).tolist())
    else:
        proto.tensor_content = np.ascontiguousarray(arr, dtype=info.numpy_dtype).tobytes()
    return proto


MAX_RANK = 64
"""numpy's most dimensions (TF allows 254, but numpy cannot build such an array)."""

_MAX_ARRAY_BYTES = int(np.iinfo(np.intp).max)


def tensor_shape(proto: tensor_pb2.TensorProto, name: str = "tensor", *, itemsize: int = 1) -> tuple[int, ...]:
    """The fully known shape of ``proto``; unknown rank or dimensions are an error, and so is a shape numpy
    cannot build for elements of ``itemsize`` bytes (more than ``MAX_RANK`` dimensions, or too many bytes)."""
    if proto.tensor_shape.unknown_rank:
        raise TensorCodecError(f"input {name!r}: shape has unknown rank")
    dims = proto.tensor_shape.dim
    if len(dims) > MAX_RANK:
        raise TensorCodecError(f"input {name!r}: shape has {len(dims)} dimensions, at most {MAX_RANK} are supported")
    shape = tuple(int(d.size) for d in dims)
    if any(size < 0 for size in shape):
        raise TensorCodecError(f"input {name!r}: shape {list(shape)} has a negative dimension")
    _check_addressable(shape, itemsize, name)
    return shape


def _check_addressable(shape: tuple[int, ...], itemsize: int, name: str) -> None:
    """numpy refuses a shape whose non-zero dimensions times the item size overflow its index type, even when a
    zero dimension makes the array empty: [0, 2**62] of float32 cannot be built."""
    span = itemsize
    for size in shape:
        span *= size or 1
    if span > _MAX_ARRAY_BYTES:
        raise TensorCodecError(
            f"input {name!r}: shape {list(shape)} is too large for numpy ({span} bytes counting its non-zero "
            f"dimensions, more than {_MAX_ARRAY_BYTES})"
        )


MAX_FILLED_ELEMENTS = 1 << 22
"""The most elements one typed value may fill. A 45-byte tensor claiming shape [2**40] with one value would
otherwise make the decoder allocate terabytes (or block the event loop for seconds on a few gigabytes); every
other encoding carries its elements on the wire, so gRPC's message size limit already bounds it."""


def from_tensor_proto(
    proto: tensor_pb2.TensorProto, name: str = "tensor", *, max_filled_elements: int = MAX_FILLED_ELEMENTS
) -> npt.NDArray[Any]:
    """Decodes ``proto`` into a numpy array of its shape.

    DT_STRING decodes to an object array of bytes. Raises TensorCodecError naming ``name`` when the
    dtype is unsupported, the shape is one numpy cannot build, the element count does not match the shape,
    a single value would fill more than ``max_filled_elements``, or numpy refuses the data in any other way.
    """
    info = _BY_DATATYPE.get(proto.dtype)
    if info is None:
        raise TensorCodecError(f"input {name!r}: unsupported dtype {dtype_name(proto.dtype)}")
    shape = tensor_shape(proto, name, itemsize=info.numpy_dtype.itemsize)
    try:
        return _decode(proto, info, shape, name, max_filled_elements)
    except (ValueError, OverflowError) as error:
        # A numpy limit the checks above do not foresee is still the client's tensor, never an internal error.
        raise TensorCodecError(f"input {name!r}: cannot decode a {dtype_name(proto.dtype)} tensor: {error}") from error


def _decode(
    proto: tensor_pb2.TensorProto, info: _DtypeInfo, shape: tuple[int, ...], name: str, max_filled_elements: int
) -> npt.NDArray[Any]:
    count = 1
    for size in shape:  # not np.prod: a numpy call costs more than this loop on the few dims a tensor has
        count *= size
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        expected = count * info.numpy_dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise TensorCodecError(
                f"input {name!r}: tensor_content has {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype_name(proto.dtype)} needs {expected}"
            )
        return np.frombuffer(proto.tensor_content, dtype=info.numpy_dtype).reshape(shape)
    values: Sequence[Any] = getattr(proto, info.typed_field)
    if proto.dtype == types_pb2.DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif proto.dtype == types_pb2.DT_HALF:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        pairs = np.asarray(values, dtype=info.numpy_dtype.type(0).real.dtype)
        if len(pairs) % 2:
            raise TensorCodecError(f"input {name!r}: complex values need an even number of floats")
        flat = pairs.view(info.numpy_dtype)
    else:
        flat = np.asarray(values, dtype=info.numpy_dtype)
    if len(flat) == count:
        return flat.reshape(shape)
    if len(flat) == 1 and count > 1:
        # TF Serving semantics: a single typed value fills the whole tensor.
        if count > max_filled_elements:
            raise TensorCodecError(
                f"input {name!r}: one value would fill shape {list(shape)} ({count} elements); "
                f"at most {max_filled_elements} elements are filled from a single value"
            )
        return np.full(shape, flat[0], dtype=flat.dtype)
    raise TensorCodecError(f"input {name!r}: {len(flat)} values given but shape {list(shape)} has {count} elements")
