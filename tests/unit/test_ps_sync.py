"""Decoding of parameter-sync pushes (hashtable_assign, table/raw_assign) and their validation."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.ps.inputs import ShardCheck
from monolith_serving.ps.sync import decode_hashtable_assign, decode_raw_assign

DIMS = {"a": 2, "b": 3}
ORDER = ("a", "b")
NO_SHARD = ShardCheck(0, 0)


def _i64(values: list[int]) -> object:
    return to_tensor_proto(np.array(values, dtype=np.int64))


def _f32(values: object) -> object:
    return to_tensor_proto(np.asarray(values, dtype=np.float32))


def test_hashtable_assign_pairs_ids_and_values_per_table() -> None:
    inputs = {"a_id": _i64([1, 2]), "a_value": _f32([[1, 2], [3, 4]]), "b_id": _i64([5]), "b_value": _f32([7, 8, 9])}
    updates = decode_hashtable_assign(inputs, DIMS, NO_SHARD)  # type: ignore[arg-type]
    assert [(u.table, u.fids.tolist(), u.values.tolist()) for u in updates] == [
        ("a", [1, 2], [[1, 2], [3, 4]]),
        ("b", [5], [[7, 8, 9]]),
    ]


@pytest.mark.parametrize(
    ("inputs", "error", "named"),
    [
        ({"c_id": _i64([1]), "c_value": _f32([[1, 2]])}, NotFoundError, "c_id"),
        ({"a_id": _i64([1])}, InvalidArgumentError, "a_value"),
        ({"a_id": _f32([1.0]), "a_value": _f32([[1, 2]])}, InvalidArgumentError, "a_id"),
        ({"a_id": _i64([1]), "a_value": _f32([1, 2, 3])}, InvalidArgumentError, "a_value"),
        ({"a_id": _i64([1, 2]), "a_value": _f32([[1, 2]])}, InvalidArgumentError, "a_value"),
        ({"a_ids": _i64([1])}, InvalidArgumentError, "a_ids"),
    ],
)
def test_hashtable_assign_bad_inputs_name_the_input(inputs: dict[str, object], error: type, named: str) -> None:
    with pytest.raises(error, match=named):
        decode_hashtable_assign(inputs, DIMS, NO_SHARD)  # type: ignore[arg-type]


def test_fids_of_another_shard_are_refused_with_floor_modulo() -> None:
    shard = ShardCheck(num_ps=3, partition=1)
    ok = {"a_id": _i64([1, 4, -2]), "a_value": _f32(np.zeros((3, 2)))}  # -2 mod 3 == 1 (floor)
    assert decode_hashtable_assign(ok, DIMS, shard)[0].rows == 3  # type: ignore[arg-type]
    bad = {"a_id": _i64([1, -1]), "a_value": _f32(np.zeros((2, 2)))}
    with pytest.raises(InvalidArgumentError, match="a_id.*shard 1 of 3"):
        decode_hashtable_assign(bad, DIMS, shard)  # type: ignore[arg-type]


def test_raw_assign_splits_by_model_table_order() -> None:
    inputs = {
        "id": _i64([10, 11, 20]),
        "id_split": _i64([0, 2, 3]),
        "flat_value": _f32([1, 2, 3, 4, 5, 6, 7]),
    }
    updates = decode_raw_assign(inputs, DIMS, ORDER, NO_SHARD)  # type: ignore[arg-type]
    assert [(u.table, u.fids.tolist(), u.values.tolist()) for u in updates] == [
        ("a", [10, 11], [[1, 2], [3, 4]]),
        ("b", [20], [[5, 6, 7]]),
    ]


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"id": _i64([1]), "id_split": _i64([0, 1]), "flat_value": _f32([1, 2])}, "id_split"),
        ({"id": _i64([1]), "id_split": _i64([0, 1, 2]), "flat_value": _f32([1, 2])}, "id_split"),
        ({"id": _i64([1]), "id_split": _i64([1, 1, 1]), "flat_value": _f32([1, 2])}, "id_split"),
        ({"id": _i64([1, 2]), "id_split": _i64([0, 2, 1]), "flat_value": _f32([1, 2])}, "id_split"),
        ({"id": _i64([1]), "id_split": _i64([0, 1, 1]), "flat_value": _f32([1, 2, 3])}, "flat_value"),
        ({"id": _i64([1]), "id_split": _i64([0, 1, 1])}, "flat_value"),
        ({"id": _i64([1]), "id_split": to_tensor_proto(np.array([0, 1, 1], np.int32)), "flat_value": _f32([1, 2])},
         "id_split"),
    ],
)  # fmt: skip
def test_raw_assign_bad_inputs_name_the_input(inputs: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidArgumentError, match=named):
        decode_raw_assign(inputs, DIMS, ORDER, NO_SHARD)  # type: ignore[arg-type]


def test_typed_field_encoding_is_accepted_too() -> None:
    ids = to_tensor_proto(np.array([3], dtype=np.int64))
    ids.ClearField("tensor_content")
    ids.int64_val.append(3)
    values = to_tensor_proto(np.zeros((1, 2), dtype=np.float32))
    values.ClearField("tensor_content")
    values.float_val.extend([0.5, 1.5])
    assert ids.dtype == types_pb2.DT_INT64
    (update,) = decode_hashtable_assign({"a_id": ids, "a_value": values}, DIMS, NO_SHARD)
    assert update.fids.tolist() == [3] and update.values.tolist() == [[0.5, 1.5]]
