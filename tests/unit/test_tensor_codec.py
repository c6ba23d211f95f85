from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from monolith_serving.core.tensor_codec import (
    MAX_RANK,
    TensorCodecError,
    datatype_for,
    from_tensor_proto,
    numpy_dtype_for,
    to_tensor_proto,
)
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2

NUMERIC = [
    np.float32,
    np.float64,
    np.int32,
    np.int64,
    np.int16,
    np.int8,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
    np.float16,
    np.complex64,
    np.complex128,
]


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(NUMERIC),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    data=st.data(),
)
def test_numeric_round_trip_through_tensor_content(dtype: Any, shape: tuple[int, ...], data: st.DataObject) -> None:
    array = data.draw(hnp.arrays(dtype, shape))
    proto = to_tensor_proto(array)
    assert proto.tensor_content or array.size == 0
    decoded = from_tensor_proto(tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=8))
def test_string_round_trip(values: list[bytes]) -> None:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    proto = to_tensor_proto(array)
    assert proto.dtype == types_pb2.DT_STRING
    assert from_tensor_proto(proto).tolist() == values


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=20))
def test_typed_float_field_decodes(values: list[float]) -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
    proto.tensor_shape.dim.add(size=len(values))
    np.testing.assert_array_equal(from_tensor_proto(proto), np.array(values, dtype=np.float32))


@pytest.mark.parametrize(
    ("dtype", "field", "values", "expected_dtype"),
    [
        (types_pb2.DT_INT64, "int64_val", [1, -5, 2**62], np.int64),
        (types_pb2.DT_INT32, "int_val", [1, -5], np.int32),
        (types_pb2.DT_INT8, "int_val", [-3, 4], np.int8),
        (types_pb2.DT_UINT8, "int_val", [3, 250], np.uint8),
        (types_pb2.DT_DOUBLE, "double_val", [0.1, 2.5], np.float64),
        (types_pb2.DT_BOOL, "bool_val", [True, False], np.bool_),
        (types_pb2.DT_UINT32, "uint32_val", [7, 2**32 - 1], np.uint32),
        (types_pb2.DT_UINT64, "uint64_val", [7, 2**64 - 1], np.uint64),
    ],
)
def test_typed_fields(dtype: int, field: str, values: list[Any], expected_dtype: Any) -> None:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    getattr(proto, field).extend(values)
    proto.tensor_shape.dim.add(size=len(values))
    decoded = from_tensor_proto(proto)
    assert decoded.dtype == np.dtype(expected_dtype)
    assert decoded.tolist() == values


def test_half_travels_as_bit_patterns() -> None:
    halves = np.array([1.5, -2.0], dtype=np.float16)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, half_val=halves.view(np.uint16).tolist())
    proto.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(from_tensor_proto(proto), halves)


def test_single_typed_value_fills_the_shape() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(from_tensor_proto(proto), np.full((2, 3), 2.5, np.float32))


def test_a_single_value_fills_no_more_than_the_limit() -> None:
    # 45 bytes on the wire claiming 2**40 float32s: refused before anything is allocated.
    huge = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"x"])
    huge.tensor_shape.dim.add(size=2**40)
    with pytest.raises(TensorCodecError, match=r"'instances'.*\[1099511627776\].*at most 4194304"):
        from_tensor_proto(huge, "instances")
    small = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[7])
    small.tensor_shape.dim.add(size=5)
    with pytest.raises(TensorCodecError, match="at most 4 elements"):
        from_tensor_proto(small, "ids", max_filled_elements=4)
    np.testing.assert_array_equal(from_tensor_proto(small, "ids", max_filled_elements=5), np.full(5, 7))


def test_scalar_shape() -> None:
    proto = to_tensor_proto(np.float32(4.0))
    assert list(proto.tensor_shape.dim) == []
    assert from_tensor_proto(proto).shape == ()


def test_count_mismatch_names_the_input() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[1, 2, 3])
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(TensorCodecError, match="'fids'.*3 values.*2 elements"):
        from_tensor_proto(proto, "fids")


def test_content_length_mismatch_names_the_input() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 10)
    proto.tensor_shape.dim.add(size=3)
    with pytest.raises(TensorCodecError, match="'x'.*10 bytes.*needs 12"):
        from_tensor_proto(proto, "x")


def test_unsupported_dtype_names_the_input() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE)
    with pytest.raises(TensorCodecError, match="'handle'.*DT_RESOURCE"):
        from_tensor_proto(proto, "handle")
    with pytest.raises(TensorCodecError):
        numpy_dtype_for(types_pb2.DT_VARIANT)


def test_unknown_dimension_is_rejected() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add(size=-1)
    with pytest.raises(TensorCodecError, match="negative"):
        from_tensor_proto(proto, "x")


def test_str_arrays_are_strings() -> None:
    assert datatype_for(np.array(["a", "b"])) == types_pb2.DT_STRING
    assert from_tensor_proto(to_tensor_proto(np.array(["a", "é"]))).tolist() == [b"a", "é".encode()]


def _shaped(dtype: int, shape: list[int], **fields: Any) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=cast(types_pb2.DataType, dtype), **fields)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def test_more_dimensions_than_numpy_supports_is_a_codec_error() -> None:
    assert from_tensor_proto(_shaped(types_pb2.DT_STRING, [1] * MAX_RANK, string_val=[b"x"])).ndim == MAX_RANK
    with pytest.raises(TensorCodecError, match="'instances': shape has 65 dimensions, at most 64"):
        from_tensor_proto(_shaped(types_pb2.DT_STRING, [1] * 65, string_val=[b"x"]), "instances")


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (types_pb2.DT_STRING, [0, 2**62]),
        (types_pb2.DT_STRING, [0, 2**63 - 1]),
        (types_pb2.DT_FLOAT, [2**62, 0]),
        (types_pb2.DT_UINT8, [0, 2**40, 2**40]),
    ],
)
def test_an_empty_shape_numpy_cannot_address_is_a_codec_error(dtype: int, shape: list[int]) -> None:
    with pytest.raises(TensorCodecError, match=r"'instances': shape \[.*\] is too large for numpy"):
        from_tensor_proto(_shaped(dtype, shape), "instances")


def test_an_empty_shape_numpy_can_address_still_decodes() -> None:
    # One-byte elements: 2**62 bytes fit numpy's index type, so this is a valid (empty) array.
    assert from_tensor_proto(_shaped(types_pb2.DT_UINT8, [0, 2**62])).shape == (0, 2**62)


_SIZES = st.sampled_from([0, 1, 2, 3, 2**31, 2**40, 2**61, 2**62, 2**63 - 1])


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from([types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_UINT8, types_pb2.DT_COMPLEX128]),
    shape=st.lists(_SIZES, max_size=70),
    values=st.integers(min_value=0, max_value=3),
    content=st.booleans(),
)
def test_any_shape_decodes_or_raises_a_codec_error(dtype: int, shape: list[int], values: int, content: bool) -> None:
    # Nothing a client puts in a shape may surface as another exception (the entry answered INTERNAL).
    proto = _shaped(dtype, shape)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend([b"x"] * values)
    elif content:
        proto.tensor_content = b"\x00" * values * numpy_dtype_for(dtype).itemsize
    elif dtype == types_pb2.DT_FLOAT:
        proto.float_val.extend([1.0] * values)
    elif dtype == types_pb2.DT_UINT8:
        proto.int_val.extend([7] * values)
    else:
        proto.dcomplex_val.extend([1.0, 2.0] * values)
    try:
        decoded = from_tensor_proto(proto, "x")
    except TensorCodecError as error:
        assert "'x'" in error.message
    else:
        assert decoded.shape == tuple(shape)
