"""Decoding of parameter-sync pushes (hashtable_assign, table/raw_assign and the names a Monolith trainer sends)
and their validation."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2
from monolith_serving.ps.inputs import ShardCheck
from monolith_serving.ps.sync import (
    HASHTABLE_ASSIGN,
    RAW_ASSIGN,
    check_raw_assign_signature,
    decode_hashtable_assign,
    decode_raw_assign,
    sync_kind,
)

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


def test_a_table_without_rows_on_the_shard_takes_its_dim_from_the_push() -> None:
    dims = {"a": 2, "b": 0, "c": 0}  # b and c: every dump file of this partition was empty
    (b,) = decode_hashtable_assign({"b_id": _i64([1, 2]), "b_value": _f32(np.ones((2, 5)))}, dims, NO_SHARD)  # type: ignore[arg-type]
    assert b.values.shape == (2, 5)
    (c,) = decode_hashtable_assign({"c_id": _i64([4]), "c_value": _f32([1, 2, 3])}, dims, NO_SHARD)  # type: ignore[arg-type]
    assert c.values.tolist() == [[1, 2, 3]]
    nothing = decode_hashtable_assign({"c_id": _i64([]), "c_value": _f32([])}, dims, NO_SHARD)  # type: ignore[arg-type]
    assert nothing[0].rows == 0
    # raw_assign: one such table takes what the others leave; two cannot share one flat_value.
    one = {"id": _i64([10, 20]), "id_split": _i64([0, 1, 2, 2]), "flat_value": _f32(range(2 + 4))}
    assert [u.values.shape for u in decode_raw_assign(one, dims, ("a", "b", "c"), NO_SHARD)] == [(1, 2), (1, 4)]  # type: ignore[arg-type]
    two = {"id": _i64([10, 20, 30]), "id_split": _i64([0, 1, 2, 3]), "flat_value": _f32(range(2 + 4 + 4))}
    with pytest.raises(InvalidArgumentError, match="'b', 'c' have no rows on this shard"):
        decode_raw_assign(two, dims, ("a", "b", "c"), NO_SHARD)  # type: ignore[arg-type]
    uneven = {"id": _i64([10, 20, 21]), "id_split": _i64([0, 1, 3, 3]), "flat_value": _f32(range(2 + 5))}
    with pytest.raises(InvalidArgumentError, match="leave 5 for the 2 ids of table 'b'"):
        decode_raw_assign(uneven, dims, ("a", "b", "c"), NO_SHARD)  # type: ignore[arg-type]
    too_wide = {"b_id": _i64([1]), "b_value": _f32(np.ones((1, 5000)))}
    with pytest.raises(InvalidArgumentError, match=r"b_value.*1\.\.4096"):
        decode_hashtable_assign(too_wide, dims, NO_SHARD)  # type: ignore[arg-type]


def test_a_value_tensor_is_checked_against_its_rows_before_it_is_decoded() -> None:
    # One typed value claiming 2**40 elements: refused from the shape, nothing is filled.
    claim = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    claim.tensor_shape.dim.add(size=2**40)
    with pytest.raises(InvalidArgumentError, match=r"a_value.*\[1099511627776\], expected \[2, 2\]"):
        decode_hashtable_assign({"a_id": _i64([1, 2]), "a_value": claim}, DIMS, NO_SHARD)  # type: ignore[arg-type]
    raw = {"id": _i64([1]), "id_split": _i64([0, 1, 1]), "flat_value": claim}
    with pytest.raises(InvalidArgumentError, match="flat_value.*1099511627776 values"):
        decode_raw_assign(raw, DIMS, ORDER, NO_SHARD)  # type: ignore[arg-type]
    filled = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5])
    filled.tensor_shape.dim.add(size=4)  # a fill of exactly the rows asked is still fine
    (update,) = decode_hashtable_assign({"a_id": _i64([1, 2]), "a_value": filled}, DIMS, NO_SHARD)  # type: ignore[arg-type]
    assert update.values.tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_monolith_resource_names_are_aliases_of_this_partitions_tables() -> None:
    """A Monolith trainer prefixes hashtable_assign inputs with the hash table's resource name
    ``MonolithHashTable_<table>_<k>`` (hash_table_ops.hash_table_from_config; <k> the PS index), which is also
    what its dump files are named after."""
    shard = ShardCheck(num_ps=3, partition=1)
    dims = {"a": 2, "t_7": 3}  # a table name ending in _<digits>: the last _<digits> is the partition
    inputs = {
        "MonolithHashTable_a_1_id": _i64([1, 4]),
        "MonolithHashTable_a_1_value": _f32([[1, 2], [3, 4]]),
        "MonolithHashTable_t_7_1_id": _i64([7]),
        "MonolithHashTable_t_7_1_value": _f32([[5, 6, 7]]),
    }
    updates = decode_hashtable_assign(inputs, dims, shard)  # type: ignore[arg-type]
    assert [(u.table, u.fids.tolist(), u.values.tolist()) for u in updates] == [
        ("a", [1, 4], [[1, 2], [3, 4]]),
        ("t_7", [7], [[5, 6, 7]]),
    ]
    # Our own names and Monolith's may be mixed in one push, one name per table.
    mixed = {"a_id": _i64([1]), "a_value": _f32([[0, 0]]), **{k: v for k, v in inputs.items() if "t_7" in k}}
    assert [u.table for u in decode_hashtable_assign(mixed, dims, shard)] == ["a", "t_7"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefix", "error", "message"),
    [
        ("MonolithHashTable_a_2", InvalidArgumentError, "table 'a' of PS partition 2, this is partition 1"),
        ("MonolithHashTable_zz_2", InvalidArgumentError, "PS partition 2, this is partition 1"),
        ("MonolithHashTable_zz_1", NotFoundError, "table 'zz' is not served"),
        ("MonolithHashTable_a", NotFoundError, "'MonolithHashTable_a' is not served"),
    ],
)  # fmt: skip
def test_monolith_resource_names_of_another_partition_or_table_are_refused(
    prefix: str, error: type, message: str
) -> None:
    inputs = {prefix + "_id": _i64([1]), prefix + "_value": _f32([[1, 2]])}
    with pytest.raises(error, match=message):
        decode_hashtable_assign(inputs, DIMS, ShardCheck(num_ps=3, partition=1))  # type: ignore[arg-type]


def test_a_table_named_twice_in_one_push_is_refused() -> None:
    inputs = {"a_id": _i64([1]), "a_value": _f32([[1, 2]]),
              "MonolithHashTable_a_0_id": _i64([1]), "MonolithHashTable_a_0_value": _f32([[3, 4]])}  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="table 'a' is also pushed as"):
        decode_hashtable_assign(inputs, DIMS, NO_SHARD)  # type: ignore[arg-type]


def test_raw_assign_signature_names() -> None:
    """Monolith's trainer pushes a multi-hash table under ``<shared_name>/raw_assign``
    (parameter_sync_tf_bridge.cc), the shared name being ``MonolithMultiHashTable_<k>`` with <k> the PS index
    (distributed_ps_factory.MultiHashTableFactory) or ``MonolithMultiHashTable_`` without PS."""
    assert sync_kind("hashtable_assign") == HASHTABLE_ASSIGN
    for name in ("table/raw_assign", "MonolithMultiHashTable_1/raw_assign", "x/raw_assign"):
        assert sync_kind(name) == RAW_ASSIGN
    assert sync_kind("raw_assign") is None and sync_kind("lookup") is None
    for ok in ("table/raw_assign", "MonolithMultiHashTable_1/raw_assign", "MonolithMultiHashTable_/raw_assign"):
        check_raw_assign_signature(ok, 1)
    with pytest.raises(InvalidArgumentError, match="partition 3's multi-hash table, this is partition 1"):
        check_raw_assign_signature("MonolithMultiHashTable_3/raw_assign", 1)
    for unknown in ("other/raw_assign", "/raw_assign", "MonolithMultiHashTable_x/raw_assign"):
        with pytest.raises(NotFoundError, match="MonolithMultiHashTable_1/raw_assign"):
            check_raw_assign_signature(unknown, 1)
