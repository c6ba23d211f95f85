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
class LookupPlan:
    """What to fetch: the unique fids of every table, and where each feature's fids sit among them."""

    unique_fids: dict[str, Int64Array]  # table -> sorted unique v2 fids (only tables with fids)
    positions: tuple[Int64Array, ...]  # per feature: index into its table's unique_fids, one per fid


def plan_lookup(spec: ServingSpec, batch: ParsedBatch) -> LookupPlan:
    """One deduplicated id list per table across all features and examples of the batch."""
    by_table: dict[str, list[int]] = {}
    for i, feature in enumerate(spec.features):
        by_table.setdefault(feature.table, []).append(i)
    unique_fids: dict[str, Int64Array] = {}
    positions: list[Int64Array] = [np.zeros(0, dtype=np.int64)] * len(spec.features)
    for table, feature_indexes in by_table.items():
        columns = [batch.sparse[i].fids for i in feature_indexes]
        sizes = [len(c) for c in columns]
        if not sum(sizes):
            continue
        unique, inverse = np.unique(np.concatenate(columns), return_inverse=True)
        unique_fids[table] = unique
        offsets = np.cumsum([0, *sizes])
        for k, i in enumerate(feature_indexes):
            positions[i] = inverse[offsets[k] : offsets[k + 1]].astype(np.int64, copy=False)
    return LookupPlan(unique_fids, tuple(positions))


def _segment_starts(rows: Int64Array) -> Int64Array:
    starts: Int64Array = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    return starts


def assemble_input(
    spec: ServingSpec, batch: ParsedBatch, plan: LookupPlan, values: Mapping[str, Float32Array]
) -> Float32Array:
    """The [batch, spec.input_width] float32 matrix the dense network takes.

    ``values[table]`` holds one embedding row per ``plan.unique_fids[table]`` entry.
    """
    x = np.zeros((batch.batch_size, spec.input_width), dtype=np.float32)
    offset = 0
    for i, feature in enumerate(spec.features):
        dim = spec.table(feature.table).dim
        width = feature.width(dim)
        column = batch.sparse[i]
        if len(column.fids):
            table_values = values[feature.table]
            if table_values.shape != (len(plan.unique_fids[feature.table]), dim):
                raise InvalidArgumentError(
                    f"table {feature.table!r}: got embeddings of shape {list(table_values.shape)}, "
                    f"expected [{len(plan.unique_fids[feature.table])}, {dim}]"
                )
            embeddings = table_values[plan.positions[i]]
            rows = column.rows
            starts = _segment_starts(rows)
            if feature.pooling is Pooling.FIRSTN:
                counts = np.diff(np.append(starts, len(rows)))
                slot = np.arange(len(rows)) - np.repeat(starts, counts)
                keep = slot < feature.first_n
                cols = offset + slot[keep, None] * dim + np.arange(dim)
                x[rows[keep, None], cols] = embeddings[keep]
            else:
                pooled = np.add.reduceat(embeddings, starts, axis=0)
                if feature.pooling is Pooling.MEAN:
                    counts = np.diff(np.append(starts, len(rows)))
                    pooled /= counts[:, None].astype(np.float32)
                x[rows[starts], offset : offset + dim] = pooled
        offset += width
    x[:, offset:] = batch.dense
    return x
