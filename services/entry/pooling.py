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


class Pooler:
    """``plan_lookup`` and ``assemble_input`` for one serving spec, with everything that depends only on the
    spec (which features read which table, their slots, columns and pooling kinds) worked out once.

    Immutable after construction; built once per loaded version and shared by its requests.
    """

    def __init__(self, spec: ServingSpec) -> None:
        self.spec = spec
        dims = {t.name: t.dim for t in spec.tables}
        columns: list[int] = []
        offset = 0
        for feature in spec.features:
            columns.append(offset)
            offset += feature.width(dims[feature.table])
        self._dense_at = offset
        by_table: dict[str, list[int]] = {}
        for i, feature in enumerate(spec.features):
            by_table.setdefault(feature.table, []).append(i)
        self._tables = {
            table: _TableLayout.build(spec, tuple(indexes), dims[table], columns) for table, indexes in by_table.items()
        }

    def plan(self, batch: ParsedBatch) -> LookupPlan:
        """One deduplicated id list per table across all features and examples of the batch."""
        unique_fids: dict[str, Int64Array] = {}
        groups: dict[str, TableGroup] = {}
        sparse = batch.sparse
        for table, layout in self._tables.items():
            feature_indexes = layout.features
            if len(feature_indexes) == 1:
                column = sparse[feature_indexes[0]]
                fids, rows = column.fids, column.rows
                offsets: tuple[int, ...] = (0, len(fids))
                if not len(fids):
                    continue
            else:
                columns = [sparse[i] for i in feature_indexes]
                ends = [0]
                for c in columns:
                    ends.append(ends[-1] + len(c.fids))
                if not ends[-1]:
                    continue
                offsets = tuple(ends)
                fids = np.concatenate([c.fids for c in columns])
                rows = np.concatenate([c.rows for c in columns])
            unique, inverse = np.unique(fids, return_inverse=True)
            unique_fids[table] = unique
            groups[table] = TableGroup(feature_indexes, offsets, inverse.astype(np.int64, copy=False), rows)
        return LookupPlan(unique_fids, groups)

    def assemble(self, batch: ParsedBatch, plan: LookupPlan, values: Mapping[str, Float32Array]) -> Float32Array:
        """The [batch, spec.input_width] float32 matrix the dense network takes.

        ``values[table]`` holds one embedding row per ``plan.unique_fids[table]`` entry.
        """
        dense_at = self._dense_at
        x = np.zeros((batch.batch_size, dense_at + batch.dense.shape[1]), dtype=np.float32)
        for table, group in plan.groups.items():
            layout = self._tables[table]
            table_values = values[table]
            if table_values.shape != (len(plan.unique_fids[table]), layout.dim):
                raise InvalidArgumentError(
                    f"table {table!r}: got embeddings of shape {list(table_values.shape)}, "
                    f"expected [{len(plan.unique_fids[table])}, {layout.dim}]"
                )
            layout.pool(batch.batch_size, group, table_values, x)
        x[:, dense_at:] = batch.dense
        return x


def plan_lookup(spec: ServingSpec, batch: ParsedBatch) -> LookupPlan:
    """``Pooler(spec).plan(batch)``; keep a ``Pooler`` when planning many batches of one spec."""
    return Pooler(spec).plan(batch)


def assemble_input(
    spec: ServingSpec, batch: ParsedBatch, plan: LookupPlan, values: Mapping[str, Float32Array]
) -> Float32Array:
    """``Pooler(spec).assemble(...)``; keep a ``Pooler`` when assembling many batches of one spec."""
    return Pooler(spec).assemble(batch, plan, values)


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


# Up to this many features on one table are pooled one by one (fewer numpy calls for the usual one to three
# features per table); more are pooled together, in a number of calls that does not grow with the features.
_PER_FEATURE_MAX = 4


@dataclass(frozen=True)
class _TableLayout:
    """How the features reading one table land in the input row (spec-only, built once).

    Each feature owns dim-wide *slots* in a [batch, slots, dim] block (sum/mean 1, firstn N): feature k's
    first slot is ``slot_base[k]``. When the features' columns are consecutive in the row (the usual
    layout) that block is a view of the input matrix itself and is written in place; otherwise it is a
    staging buffer copied out per feature (``copies``).
    """

    dim: int
    features: tuple[int, ...]  # spec feature indexes, ascending
    slots: int
    feature_ids: Int64Array  # 0..len(features)-1
    slot_base: Int64Array
    limits: Int64Array  # firstn N per feature, 0 for sum/mean
    pooled: npt.NDArray[np.bool_]  # per feature: sum or mean (not firstn)
    mean: npt.NDArray[np.bool_]  # per feature: mean
    any_pooled: bool
    all_pooled: bool
    any_mean: bool
    all_mean: bool
    column: int | None  # first column of the block in the row when written in place, else None
    copies: tuple[tuple[int, int, int], ...]  # (row column, block column, width) when not in place
    kinds: tuple[tuple[Pooling, int, int], ...]  # per feature: pooling, first slot, firstn N

    @staticmethod
    def build(spec: ServingSpec, features: tuple[int, ...], dim: int, columns: list[int]) -> _TableLayout:
        specs = [spec.features[i] for i in features]
        widths = [f.first_n if f.pooling is Pooling.FIRSTN else 1 for f in specs]
        bases = [sum(widths[:k]) for k in range(len(widths))]
        pooled = [f.pooling is not Pooling.FIRSTN for f in specs]
        mean = [f.pooling is Pooling.MEAN for f in specs]
        in_place = all(columns[i] == columns[features[0]] + bases[k] * dim for k, i in enumerate(features))
        return _TableLayout(
            dim=dim,
            features=features,
            slots=sum(widths),
            feature_ids=np.arange(len(features), dtype=np.int64),
            slot_base=np.array(bases, dtype=np.int64),
            limits=np.array([0 if p else f.first_n for f, p in zip(specs, pooled, strict=True)], dtype=np.int64),
            pooled=np.array(pooled, dtype=bool),
            mean=np.array(mean, dtype=bool),
            any_pooled=any(pooled),
            all_pooled=all(pooled),
            any_mean=any(mean),
            all_mean=all(mean),
            column=columns[features[0]] if in_place else None,
            copies=tuple((columns[i], bases[k] * dim, widths[k] * dim) for k, i in enumerate(features)),
            kinds=tuple((f.pooling, bases[k], f.first_n) for k, f in enumerate(specs)),
        )

    def pool(self, batch_size: int, group: TableGroup, table_values: Float32Array, x: Float32Array) -> None:
        """Pools the features of the table into their columns of ``x``."""
        if not len(group.inverse):
            return
        width = self.slots * self.dim
        if self.column is not None:
            # A view of the row's columns for this table: the writes below land in x directly.
            out = x[:, self.column : self.column + width].reshape(batch_size, self.slots, self.dim)
        else:
            out = np.zeros((batch_size, self.slots, self.dim), dtype=np.float32)
        embeddings = table_values.take(group.inverse, axis=0)
        if len(self.features) <= _PER_FEATURE_MAX:
            self._pool_each(group, embeddings, out)
        else:
            self._pool_together(batch_size, group, embeddings, out)
        if self.column is None:
            flat = out.reshape(batch_size, width)
            for column, lo, size in self.copies:
                x[:, column : column + size] = flat[:, lo : lo + size]

    def _pool_each(self, group: TableGroup, embeddings: Float32Array, out: Float32Array) -> None:
        """Feature by feature: each feature's fids are one slice of the group's (about 7 numpy calls each)."""
        offsets = group.offsets
        for k, (pooling, base, first_n) in enumerate(self.kinds):
            lo, hi = offsets[k], offsets[k + 1]
            if lo == hi:
                continue
            rows = group.rows[lo:hi]  # non-decreasing: each example's fids are one run
            values = embeddings[lo:hi]
            if pooling is Pooling.FIRSTN:
                # The fid in place p of its example's run fills slot p; a run starts where its row first occurs.
                place = np.arange(hi - lo) - rows.searchsorted(rows)
                keep = place < first_n
                if keep.all():
                    out[rows, base + place] = values
                else:
                    out[rows[keep], base + place[keep]] = values[keep]
                continue
            starts = _segment_starts(rows)
            pooled = np.add.reduceat(values, starts, axis=0)
            if pooling is Pooling.MEAN:
                pooled /= _run_lengths(starts, hi - lo).astype(np.float32)[:, None]
            out[rows[starts], base] = pooled

    def _pool_together(self, batch_size: int, group: TableGroup, embeddings: Float32Array, out: Float32Array) -> None:
        """All features of the table at once (a fixed number of numpy calls, whatever the features).

        A segment is the fids of one feature in one example. Its key, feature-in-group * batch + example,
        never decreases along the concatenated fids (features are concatenated in order and each feature's
        rows are non-decreasing), so segments are contiguous runs: ``np.add.reduceat`` sums them, and a
        fid's place inside its run is its firstn slot.
        """
        n = len(group.inverse)
        offsets = group.offsets
        rows = group.rows
        if len(offsets) == 2:
            feature_of = np.zeros(n, dtype=np.int64)
            starts = _segment_starts(rows)
        else:
            sizes = [offsets[k + 1] - offsets[k] for k in range(len(offsets) - 1)]
            feature_of = np.repeat(self.feature_ids, sizes)
            starts = _segment_starts(feature_of * batch_size + rows)
        segment_feature = feature_of[starts]
        lengths = _run_lengths(starts, n) if self.any_mean or not self.all_pooled else None
        if self.any_pooled:
            pooled = np.add.reduceat(embeddings, starts, axis=0)
            if lengths is not None and self.any_mean:
                divisor = lengths.astype(np.float32)
                if not self.all_mean:
                    divisor[~self.mean[segment_feature]] = 1.0
                pooled /= divisor[:, None]
            segment_rows = rows[starts]
            segment_slots = self.slot_base[segment_feature]
            if not self.all_pooled:
                keep = self.pooled[segment_feature]
                pooled, segment_rows, segment_slots = pooled[keep], segment_rows[keep], segment_slots[keep]
            out[segment_rows, segment_slots] = pooled
        if lengths is not None and not self.all_pooled:
            # firstn: the fid in place p of its segment fills slot p of its feature.
            place = np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)
            keep = place < self.limits[feature_of]
            out[rows[keep], self.slot_base[feature_of[keep]] + place[keep]] = embeddings[keep]
