"""Parameter-sync intake: decode a trainer's push into validated per-table updates (REFERENCE §6).

Everything is validated before a single row is applied, so a request is all-or-nothing.

Names a Monolith trainer sends, besides ours (docs/ps.md): ``hashtable_assign`` inputs prefixed with the hash
table's resource name ``MonolithHashTable_<table>_<k>`` (``<k>``: the PS the partition lives on), and the
multi-hash-table push under ``<shared name>/raw_assign`` where the shared name is ``MonolithMultiHashTable_<k>``
(``MonolithMultiHashTable_`` when the trainer has no PS). Both are accepted for this PS's own partition only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.hash_table_dump import NATIVE_MULTI_DUMP_PREFIX, parse_table_resource_name
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.ps.fid_index import Int64Array
from monolith_serving.ps.inputs import (
    MAX_TABLE_DIM,
    ShardCheck,
    TensorMap,
    decode_fids,
    decode_ragged_ids,
    decode_typed,
    decode_values,
    element_count,
)

HASHTABLE_ASSIGN = "hashtable_assign"
RAW_ASSIGN = "table/raw_assign"
RAW_ASSIGN_SUFFIX = "/raw_assign"
_ID_SUFFIX = "_id"
_VALUE_SUFFIX = "_value"
_DIGITS = re.compile(r"[0-9]*")


def sync_kind(signature: str) -> str | None:
    """The sync signature ``signature`` asks for: HASHTABLE_ASSIGN, RAW_ASSIGN (for any ``<prefix>/raw_assign``;
    ``check_raw_assign_signature`` judges the prefix), or None when it is no sync signature."""
    if signature == HASHTABLE_ASSIGN:
        return HASHTABLE_ASSIGN
    if signature.endswith(RAW_ASSIGN_SUFFIX):
        return RAW_ASSIGN
    return None


def monolith_raw_assign(partition: int) -> str:
    """The multi-hash-table signature a Monolith trainer pushes to PS ``partition``: its table's shared name
    ``MonolithMultiHashTable_<k>`` + ``/raw_assign``."""
    return f"{NATIVE_MULTI_DUMP_PREFIX}{partition}{RAW_ASSIGN_SUFFIX}"


def check_raw_assign_signature(signature: str, partition: int) -> None:
    """Accepts ``table/raw_assign``, ``MonolithMultiHashTable_<partition>/raw_assign`` and
    ``MonolithMultiHashTable_/raw_assign``. Another PS's name is INVALID_ARGUMENT (the push was routed to the wrong
    shard), any other prefix NOT_FOUND."""
    if signature == RAW_ASSIGN:
        return
    prefix = signature[: -len(RAW_ASSIGN_SUFFIX)]
    index = prefix[len(NATIVE_MULTI_DUMP_PREFIX) :]
    if not prefix.startswith(NATIVE_MULTI_DUMP_PREFIX) or _DIGITS.fullmatch(index) is None:
        raise NotFoundError(
            f"signature {signature!r} not found (multi-hash-table pushes: {RAW_ASSIGN} or "
            f"{monolith_raw_assign(partition)})"
        )
    if index not in ("", str(partition)):
        raise InvalidArgumentError(
            f"signature {signature!r}: that is PS partition {index}'s multi-hash table, this is partition "
            f"{partition} ({monolith_raw_assign(partition)})"
        )


@dataclass(frozen=True)
class TableUpdate:
    table: str
    fids: Int64Array
    values: npt.NDArray[np.float32]

    @property
    def rows(self) -> int:
        return int(self.fids.shape[0])


def decode_hashtable_assign(inputs: TensorMap, dims: Mapping[str, int], shard: ShardCheck) -> list[TableUpdate]:
    """``<table>_id`` int64[n] + ``<table>_value`` float32[n, dim] pairs, for any subset of the tables.

    ``<table>`` is the table's name or Monolith's ``MonolithHashTable_<table>_<k>`` with ``<k>`` this shard's
    partition (``shard.partition``); one push may not name a table twice.
    """
    prefixes: set[str] = set()
    for name in inputs:
        if name.endswith(_ID_SUFFIX):
            prefixes.add(name[: -len(_ID_SUFFIX)])
        elif name.endswith(_VALUE_SUFFIX):
            prefixes.add(name[: -len(_VALUE_SUFFIX)])
        else:
            raise InvalidArgumentError(f"input {name!r}: hashtable_assign inputs are <table>_id and <table>_value")
    named: dict[str, str] = {}  # table -> the prefix naming it
    for prefix in sorted(prefixes):
        table = _table_named(prefix, dims, shard.partition)
        if table in named:
            raise InvalidArgumentError(
                f"input {prefix + _ID_SUFFIX!r}: table {table!r} is also pushed as {named[table] + _ID_SUFFIX!r}; "
                "one push names a table once"
            )
        named[table] = prefix
    updates = []
    for table in sorted(named):
        prefix = named[table]
        id_name, value_name = prefix + _ID_SUFFIX, prefix + _VALUE_SUFFIX
        if id_name not in inputs or value_name not in inputs:
            missing = id_name if id_name not in inputs else value_name
            raise InvalidArgumentError(f"input {missing!r} is missing (ids and values come in pairs)")
        fids = decode_fids(inputs[id_name], id_name)
        shard.check(fids, id_name)
        values = decode_values(inputs[value_name], value_name, len(fids), dims[table])
        updates.append(TableUpdate(table, fids, values))
    return updates


def _table_named(prefix: str, dims: Mapping[str, int], partition: int) -> str:
    """The table a ``hashtable_assign`` input prefix names: the table itself, or Monolith's resource name of its
    partition on this PS. A resource name of another partition is INVALID_ARGUMENT (a push routed to the wrong
    shard: Monolith's PS ``k`` only holds the ``_<k>`` tables), an unknown table NOT_FOUND."""
    if prefix in dims:
        return prefix
    resource = parse_table_resource_name(prefix)
    if resource is not None and resource.partition != partition:
        raise InvalidArgumentError(
            f"input {prefix + _ID_SUFFIX!r}: {prefix!r} is table {resource.table!r} of PS partition "
            f"{resource.partition}, this is partition {partition}"
        )
    if resource is not None and resource.table in dims:
        return resource.table
    table = resource.table if resource is not None else prefix
    raise NotFoundError(f"input {prefix + _ID_SUFFIX!r}: table {table!r} is not served by this model")


def decode_raw_assign(
    inputs: TensorMap, dims: Mapping[str, int], order: tuple[str, ...], shard: ShardCheck
) -> list[TableUpdate]:
    """``id`` int64[total], ``id_split`` int64[tables + 1] (prefix offsets), ``flat_value`` float32[sum n_t*dim_t];
    tables in ``order``."""
    for required in ("id", "id_split", "flat_value"):
        if required not in inputs:
            raise InvalidArgumentError(f"input {required!r} is missing (raw_assign needs id, id_split, flat_value)")
    extra = sorted(set(inputs) - {"id", "id_split", "flat_value"})
    if extra:
        raise InvalidArgumentError(f"input {extra[0]!r}: raw_assign takes only id, id_split, flat_value")
    fids, split = decode_ragged_ids(inputs, len(order), shard)
    # Counted from the shape before decoding: one typed value would otherwise fill whatever count it claims.
    flat_count = element_count(inputs["flat_value"], "flat_value")
    counts = np.diff(split)
    table_dims = _raw_assign_dims(order, dims, counts, flat_count)
    value_ends = np.cumsum(counts * table_dims)
    expected = int(value_ends[-1]) if len(value_ends) else 0
    if flat_count != expected:
        raise InvalidArgumentError(
            f"input 'flat_value': {flat_count} values, "
            f"id_split and the table dims {table_dims.tolist()} need {expected}"
        )
    flat: npt.NDArray[np.float32] = decode_typed(inputs["flat_value"], "flat_value", types_pb2.DT_FLOAT, None)
    flat = flat.reshape(-1)
    updates = []
    value_start = 0
    for k, table in enumerate(order):
        lo, hi = int(split[k]), int(split[k + 1])
        value_end = int(value_ends[k])
        if hi > lo:
            values = flat[value_start:value_end].reshape(hi - lo, int(table_dims[k]))
            updates.append(TableUpdate(table, fids[lo:hi], values))
        value_start = value_end
    return updates


def _raw_assign_dims(
    order: tuple[str, ...], dims: Mapping[str, int], counts: Int64Array, flat_count: int
) -> Int64Array:
    """The tables' dims for this push. A table with no rows on this shard yet has dim 0 (unknown); it takes the
    values the other tables leave over, which only works for one such table per push."""
    table_dims = np.array([dims[t] for t in order], dtype=np.int64)
    unknown = np.flatnonzero((table_dims == 0) & (counts > 0))
    if len(unknown) == 0:
        return table_dims
    if len(unknown) > 1:
        names = ", ".join(repr(order[k]) for k in unknown)
        raise InvalidArgumentError(
            f"input 'flat_value': tables {names} have no rows on this shard yet, so their dims are unknown and one "
            "flat_value cannot be split between them; push them with hashtable_assign first"
        )
    k = int(unknown[0])
    rows = int(counts[k])
    left = flat_count - int(np.sum(counts * table_dims))
    if left <= 0 or left % rows or left // rows > MAX_TABLE_DIM:
        raise InvalidArgumentError(
            f"input 'flat_value': {flat_count} values leave {left} for the {rows} ids of table {order[k]!r}, which "
            f"has no rows on this shard yet and takes its dim from this push: not a row width in 1..{MAX_TABLE_DIM}"
        )
    table_dims[k] = left // rows
    return table_dims
