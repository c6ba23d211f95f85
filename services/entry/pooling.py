"""Deduplicating fids per table and pooling looked-up embeddings into the dense network's input row.

The input row (serving_spec docstring) is the pooled features in spec order — ``sum``/``mean`` give
``dim`` columns, ``firstn`` the first N embeddings of the example concatenated and zero-padded (N*dim) —
followed by the dense inputs. An example without fids for a feature pools to zeros (mean included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.serving_spec import Pooling, ServingSpec
from monolith_serving.entry.request_parser import ParsedBatch

Int64Array = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TableGroup:
    """The fids of every feature reading one table, concatenated in spec order."""

    features: tuple[int, ...]  # spec feature indexes, ascending
    offsets: tuple[int, ...]  # start of each feature's fids in ``inverse``/``rows``; one extra end offset
    inverse: Int64Array  # per fid: its index into the table's unique fids
    rows: Int64Array  # per fid: its example


@dataclass(frozen=True)
class LookupPlan:
    """What to fetch: the unique fids of every table, and where each feature's fids sit among them."""

    unique_fids: dict[str, Int64Array]  # table -> sorted unique v2 fids (only tables with fids)
    groups: dict[str, TableGroup]  # same keys as unique_fids

    def positions(self, table: str, k: int) -> Int64Array:
        """Index into ``unique_fids[table]`` of each fid of the group's k-th feature."""
        group = self.groups[table]
        return group.inverse[group.offsets[k] : group.offsets[k + 1]]


def plan_lookup(spec: ServingSpec, batch: ParsedBatch) -> LookupPlan:
    """One deduplicated id list per table across all features and examples of the batch."""
    by_table: dict[str, list[int]] = {}
    for i, feature in enumerate(spec.features):
        by_table.setdefault(feature.table, []).append(i)
    unique_fids: dict[str, Int64Array] = {}
    groups: dict[str, TableGroup] = {}
    for table, feature_indexes in by_table.items():
        columns = [batch.sparse[i] for i in feature_indexes]
        sizes = [len(c.fids) for c in columns]
        if not sum(sizes):
            continue
        if len(columns) == 1:
            fids, rows = columns[0].fids, columns[0].rows
        else:
            fids = np.concatenate([c.fids for c in columns])
            rows = np.concatenate([c.rows for c in columns])
        unique, inverse = np.unique(fids, return_inverse=True)
        unique_fids[table] = unique
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        groups[table] = TableGroup(tuple(feature_indexes), tuple(offsets), inverse.astype(np.int64, copy=False), rows)
    return LookupPlan(unique_fids, groups)


def _segment_starts(keys: Int64Array) -> Int64Array:
    """Where each run of equal keys begins (``keys`` is grouped: equal keys are adjacent)."""
    change = np.empty(len(keys), dtype=bool)
    change[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=change[1:])
    starts: Int64Array = change.nonzero()[0]
    return starts


def _run_lengths(starts: Int64Array, n: int) -> Int64Array:
    counts = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1])
    counts[-1:] = n - starts[-1:]
    return counts


def _feature_columns(spec: ServingSpec) -> tuple[list[int], list[int], int]:
    """Per feature: its first column and its table's dim; and where the dense inputs start."""
    dims = {t.name: t.dim for t in spec.tables}
    columns: list[int] = []
    feature_dims: list[int] = []
    offset = 0
    for feature in spec.features:
        dim = dims[feature.table]
        columns.append(offset)
        feature_dims.append(dim)
        offset += feature.width(dim)
    return columns, feature_dims, offset


def assemble_input(
    spec: ServingSpec, batch: ParsedBatch, plan: LookupPlan, values: Mapping[str, Float32Array]
) -> Float32Array:
    """The [batch, spec.input_width] float32 matrix the dense network takes.

    ``values[table]`` holds one embedding row per ``plan.unique_fids[table]`` entry.
    """
    columns, dims, dense_at = _feature_columns(spec)
    x = np.zeros((batch.batch_size, dense_at + batch.dense.shape[1]), dtype=np.float32)
    for table, group in plan.groups.items():
        dim = dims[group.features[0]]
        table_values = values[table]
        if table_values.shape != (len(plan.unique_fids[table]), dim):
            raise InvalidArgumentError(
                f"table {table!r}: got embeddings of shape {list(table_values.shape)}, "
                f"expected [{len(plan.unique_fids[table])}, {dim}]"
            )
        _pool_group(spec, batch.batch_size, group, table_values, columns, dim, x)
    x[:, dense_at:] = batch.dense
    return x


def _pool_group(
    spec: ServingSpec,
    batch_size: int,
    group: TableGroup,
    table_values: Float32Array,
    columns: list[int],
    dim: int,
    x: Float32Array,
) -> None:
    """Pools every feature of one table at once (a fixed number of numpy calls, whatever the features).

    A segment is the fids of one feature in one example. Its key, feature-in-group * batch + example,
    never decreases along the concatenated fids (features are concatenated in order and each feature's
    rows are non-decreasing), so segments are contiguous runs: ``np.add.reduceat`` sums them, and a fid's
    place inside its run is its firstn slot.
    """
    n = len(group.inverse)
    if not n:
        return
    features = [spec.features[i] for i in group.features]
    # Per feature of the group (plain Python lists, tiny): dim-wide slots it owns in the staging buffer
    # (sum/mean 1, firstn N), the first of them, and its firstn limit (0 for sum/mean).
    widths = [f.first_n if f.pooling is Pooling.FIRSTN else 1 for f in features]
    bases = [0] * len(features)
    for k in range(1, len(features)):
        bases[k] = bases[k - 1] + widths[k - 1]
    pooled_kinds = [f.pooling is not Pooling.FIRSTN for f in features]
    offsets = group.offsets
    feature_of = np.repeat(
        np.arange(len(features), dtype=np.int64), [offsets[k + 1] - offsets[k] for k in range(len(features))]
    )
    rows = group.rows
    starts = _segment_starts(feature_of * batch_size + rows)
    embeddings = table_values.take(group.inverse, axis=0)
    segment_feature = feature_of[starts]
    slot_base = np.array(bases, dtype=np.int64)
    # Rows land in a [batch, slots, dim] buffer through two 1-d indexes (cheap), then each feature's slots
    # are copied to its columns of x with one slice assignment.
    out = np.zeros((batch_size, bases[-1] + widths[-1], dim), dtype=np.float32)
    if any(pooled_kinds):
        pooled = np.add.reduceat(embeddings, starts, axis=0)
        if any(f.pooling is Pooling.MEAN for f in features):
            divisor = _run_lengths(starts, n).astype(np.float32)
            if not all(f.pooling is Pooling.MEAN for f in features):
                is_sum = np.array([f.pooling is not Pooling.MEAN for f in features])
                divisor[is_sum[segment_feature]] = 1.0
            pooled /= divisor[:, None]
        segment_rows = rows[starts]
        segment_slots = slot_base[segment_feature]
        if not all(pooled_kinds):
            keep = np.array(pooled_kinds)[segment_feature]
            pooled, segment_rows, segment_slots = pooled[keep], segment_rows[keep], segment_slots[keep]
        out[segment_rows, segment_slots] = pooled
    if not all(pooled_kinds):
        # firstn: the fid in place p of its segment fills slot p of its feature.
        limits = np.array([0 if pooled else f.first_n for f, pooled in zip(features, pooled_kinds, strict=True)])
        place = np.arange(n, dtype=np.int64) - np.repeat(starts, _run_lengths(starts, n))
        keep = place < limits[feature_of]
        out[rows[keep], slot_base[feature_of[keep]] + place[keep]] = embeddings[keep]
    flat = out.reshape(batch_size, -1)
    for k, i in enumerate(group.features):
        lo = bases[k] * dim
        width = widths[k] * dim
        x[:, columns[i] : columns[i] + width] = flat[:, lo : lo + width]
