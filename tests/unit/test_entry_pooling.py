"""Dedup + pooling against a loop-by-loop reference, on random batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_serving.core.serving_spec import (
    DenseBackend,
    DenseInputSpec,
    DenseSpec,
    FeatureSpec,
    Pooling,
    ServingSpec,
    TableSpec,
)
from monolith_serving.entry.pooling import assemble_input, plan_lookup
from monolith_serving.entry.request_parser import ParsedBatch, SparseColumn

SPEC = ServingSpec(
    model_name="t",
    num_ps=1,
    tables=(TableSpec("a", 3), TableSpec("b", 2)),
    features=(
        FeatureSpec("s", 1, "a", Pooling.SUM),
        FeatureSpec("m", 2, "a", Pooling.MEAN),
        FeatureSpec("f", 3, "b", Pooling.FIRSTN, first_n=3),
    ),
    dense_inputs=(DenseInputSpec("d", 2),),
    dense=DenseSpec(DenseBackend.NUMPY),
)


def embedding(table: str, fid: int, dim: int) -> list[float]:
    """A deterministic embedding per (table, fid), computed without numpy tables."""
    return [((fid * 31 + k * 7 + len(table)) % 17) / 4.0 - 2.0 for k in range(dim)]


# The features of table "a" are not next to each other in the input row: pooled through a staging block.
INTERLEAVED = ServingSpec(
    model_name="t",
    num_ps=1,
    tables=(TableSpec("a", 3), TableSpec("b", 2)),
    features=(
        FeatureSpec("s", 1, "a", Pooling.SUM),
        FeatureSpec("f", 3, "b", Pooling.FIRSTN, first_n=3),
        FeatureSpec("m", 2, "a", Pooling.MEAN),
    ),
    dense_inputs=(DenseInputSpec("d", 2),),
    dense=DenseSpec(DenseBackend.NUMPY),
)

# Five features on table "a": pooled together rather than feature by feature.
WIDE = ServingSpec(
    model_name="t",
    num_ps=1,
    tables=(TableSpec("a", 3), TableSpec("b", 2)),
    features=(
        FeatureSpec("s", 1, "a", Pooling.SUM),
        FeatureSpec("m", 2, "a", Pooling.MEAN),
        FeatureSpec("f", 3, "a", Pooling.FIRSTN, first_n=3),
        FeatureSpec("t", 4, "b", Pooling.FIRSTN, first_n=2),
        FeatureSpec("s2", 5, "a", Pooling.SUM),
        FeatureSpec("m2", 6, "a", Pooling.MEAN),
    ),
    dense_inputs=(DenseInputSpec("d", 2),),
    dense=DenseSpec(DenseBackend.NUMPY),
)


def reference(
    examples: list[dict[str, list[int]]], dense: list[list[float]], spec: ServingSpec = SPEC
) -> list[list[float]]:
    rows = []
    for example, d in zip(examples, dense, strict=True):
        row: list[float] = []
        for feature in spec.features:
            dim = spec.table(feature.table).dim
            vectors = [embedding(feature.table, fid, dim) for fid in example.get(feature.name, [])]
            if feature.pooling is Pooling.FIRSTN:
                for n in range(feature.first_n):
                    row.extend(vectors[n] if n < len(vectors) else [0.0] * dim)
                continue
            total = [sum(v[k] for v in vectors) for k in range(dim)]
            if feature.pooling is Pooling.MEAN and vectors:
                total = [t / len(vectors) for t in total]
            row.extend(total)
        rows.append(row + d)
    return rows


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "s": st.lists(st.integers(0, 20), max_size=4),
                "m": st.lists(st.integers(0, 20), max_size=4),
                "f": st.lists(st.integers(0, 20), max_size=5),
                # read by WIDE only
                "t": st.lists(st.integers(0, 20), max_size=4),
                "s2": st.lists(st.integers(0, 20), max_size=3),
                "m2": st.lists(st.integers(0, 20), max_size=3),
            }
        ),
        min_size=1,
        max_size=6,
    )
)
@pytest.mark.parametrize("spec", [SPEC, INTERLEAVED, WIDE], ids=["grouped", "interleaved", "wide"])
def test_pooling_matches_the_reference(spec: ServingSpec, examples: list[dict[str, list[int]]]) -> None:
    columns = []
    for feature in spec.features:
        fids = [fid for ex in examples for fid in ex[feature.name]]
        rows = [i for i, ex in enumerate(examples) for _ in ex[feature.name]]
        columns.append(SparseColumn(np.array(fids, dtype=np.int64), np.array(rows, dtype=np.int64)))
    dense = [[float(i), -float(i)] for i in range(len(examples))]
    batch = ParsedBatch(len(examples), tuple(columns), np.array(dense, dtype=np.float32))
    plan = plan_lookup(spec, batch)
    for table, unique in plan.unique_fids.items():
        assert len(set(unique.tolist())) == len(unique)  # deduplicated
        used = {
            fid
            for f, ex in ((f, ex) for f in spec.features for ex in examples)
            if f.table == table
            for fid in ex[f.name]
        }
        assert set(unique.tolist()) == used
    values = {
        table: np.array([embedding(table, int(fid), spec.table(table).dim) for fid in unique], dtype=np.float32)
        for table, unique in plan.unique_fids.items()
    }
    got = assemble_input(spec, batch, plan, values)
    assert got.shape == (len(examples), spec.input_width)
    expected = np.array(reference(examples, dense, spec), dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
