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
from monolith_serving.core.fid_hash import random_multiplier
from monolith_serving.core.serving_spec import Pooling, ServingSpec
from monolith_serving.entry.pool_kernels import FIRSTN, MEAN, SUM, pool_table, unique_inverse
from monolith_serving.entry.request_parser import ParsedBatch

Int64Array = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TableGroup:
    """The fids of every feature reading one table (the layout's ``features``), concatenated in spec order."""

    offsets: Int64Array  # start of each feature's fids in ``inverse``/``rows``; one extra end offset
    inverse: Int64Array  # per fid: its index into the table's unique fids
    rows: Int64Array  # per fid: its example


@dataclass(frozen=True)
class LookupPlan:
    """What to fetch: the unique fids of every table, and where each feature's fids sit among them."""

    unique_fids: dict[str, Int64Array]  # table -> its distinct fids, first occurrence first (tables with fids)
    groups: dict[str, TableGroup]  # same keys as unique_fids


def _frozen(values: list[int]) -> Int64Array:
    array = np.array(values, dtype=np.int64)
    array.flags.writeable = False  # shared by every request of the version
    return array


@dataclass(frozen=True)
class _TableLayout:
    """Where the features reading one table land in the input row (spec-only, built once per version)."""

    dim: int
    features: tuple[int, ...]  # spec feature indexes, ascending
    kinds: Int64Array  # per feature: pool_kernels.SUM, MEAN or FIRSTN
    columns: Int64Array  # per feature: its first column in the row
    first_n: Int64Array  # per feature: firstn N, 0 for sum/mean


_KIND_CODES = {Pooling.SUM: SUM, Pooling.MEAN: MEAN, Pooling.FIRSTN: FIRSTN}


class Pooler:
    """``plan_lookup`` and ``assemble_input`` for one serving spec, with everything that depends only on the
    spec (which features read which table, their columns and pooling kinds) worked out once.

    Immutable after construction; built once per loaded version and shared by its requests.
    """

    def __init__(self, spec: ServingSpec, *, hash_multiplier: int | None = None) -> None:
        self.spec = spec
        # Per Pooler (per loaded version), secret: see core.fid_hash. Tests may fix it.
        self._multiplier = random_multiplier() if hash_multiplier is None else hash_multiplier
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
            table: _TableLayout(
                dim=dims[table],
                features=tuple(indexes),
                kinds=_frozen([_KIND_CODES[spec.features[i].pooling] for i in indexes]),
                columns=_frozen([columns[i] for i in indexes]),
                first_n=_frozen([spec.features[i].first_n for i in indexes]),
            )
            for table, indexes in by_table.items()
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
                if not len(fids):
                    continue
                offsets = np.array((0, len(fids)), dtype=np.int64)
            else:
                columns = [sparse[i] for i in feature_indexes]
                ends = [0]
                for c in columns:
                    ends.append(ends[-1] + len(c.fids))
                if not ends[-1]:
                    continue
                offsets = np.array(ends, dtype=np.int64)
                fids = np.concatenate([c.fids for c in columns])
                rows = np.concatenate([c.rows for c in columns])
            unique, inverse = unique_inverse(np.ascontiguousarray(fids, dtype=np.int64), self._multiplier)
            unique_fids[table] = unique
            groups[table] = TableGroup(offsets, inverse, np.ascontiguousarray(rows, dtype=np.int64))
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
            pool_table(
                np.ascontiguousarray(table_values, dtype=np.float32),
                group.inverse,
                group.rows,
                group.offsets,
                layout.kinds,
                layout.columns,
                layout.first_n,
                x,
            )
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
