"""Predict coalescing (``request_coalesce``): concurrent Predicts of one version run as one pass.

The embedding lookup is a gated fake of our own ``EmbeddingLookup`` (no network), so a test decides when
the pass in flight returns and what queues behind it. Every merged answer is compared with the same
request run alone on a model without coalescing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from monolith_serving.client.inputs import encode, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import DeadlineExceededError, InvalidArgumentError, UnavailableError
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig, PredictResult
from monolith_serving.entry.ps_client import EmbeddingLookup, LookupResult
from monolith_serving.entry.request_coalesce import PassDeadlines, RequestCoalescing, concat_batches
from monolith_serving.entry.request_parser import ParsedBatch, SparseColumn

Inputs = dict[str, npt.NDArray[np.object_]]


class GatedLookup(EmbeddingLookup):
    """Embeddings derived from the fid; each call waits for ``gate`` (set = answer at once) and is
    recorded; ``fail`` makes calls raise UnavailableError."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[tuple[int, dict[str, list[int]]]] = []
        self.fail = False

    async def lookup(
        self,
        version: int,
        fids: Mapping[str, npt.NDArray[np.int64]],
        dims: Mapping[str, int],
        timeout_s: float,
        urgent_s: float | None = None,
    ) -> LookupResult:
        self.calls.append((version, {t: f.tolist() for t, f in fids.items()}))
        await self.gate.wait()
        if self.fail:
            raise UnavailableError("PS shard 0 is down (test)")
        values = {
            t: ((f[:, None] % 11).astype(np.float32) + np.arange(dims[t], dtype=np.float32)) / 11
            for t, f in fids.items()
        }
        return LookupResult(values, {0: version, 1: version})


def make_model(
    base: Path, lookup: EmbeddingLookup, coalescing: RequestCoalescing, metrics: EntryMetrics | None = None
) -> EntryModel:
    return EntryModel(
        config=EntryModelConfig(name="entry", base_path=base / "entry", fetch_ps_timeout_ms=2000),
        num_ps=2,
        lookup=lookup,
        ps_ready=lambda version: True,
        metrics=metrics or EntryMetrics(),
        coalescing=coalescing,
    )


async def gated_model(
    export: Path, coalescing: RequestCoalescing, metrics: EntryMetrics | None = None
) -> tuple[GatedLookup, EntryModel]:
    """A served model whose lookups wait at a closed gate (the test opens it)."""
    lookup = GatedLookup()
    model = make_model(export, lookup, coalescing, metrics)
    await model.refresh()
    lookup.gate.clear()
    return lookup, model


def inputs_for(base: Path, kind: str, batch: int, seed: int) -> Inputs:
    spec = load_serving_spec(base / "entry" / "1")
    examples = random_examples(spec, batch, np.random.default_rng(seed))
    return {k: np.array(v, dtype=object) for k, v in encode(spec, kind, examples).items()}


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=50, version=1))
    return tmp_path


def predict(model: EntryModel, inputs: Inputs, timeout_s: float | None = None) -> asyncio.Task[PredictResult]:
    """A Predict of ``inputs`` running in its own task (as concurrent gRPC handlers would)."""
    return asyncio.create_task(
        model.predict(name="entry", version=None, signature_name="", inputs=inputs, timeout_s=timeout_s)
    )


async def alone(export: Path, inputs: Inputs) -> npt.NDArray[np.float32]:
    """The scores of ``inputs`` run by itself, with coalescing off."""
    model = make_model(export, GatedLookup(), RequestCoalescing(enabled=False))
    await model.refresh()
    result = await model.predict(name="entry", version=None, signature_name="", inputs=inputs)
    return result.outputs["scores"]


async def until(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def test_concat_batches_shifts_each_batchs_rows_and_stacks_the_dense_inputs() -> None:
    def column(fids: list[int], rows: list[int]) -> SparseColumn:
        return SparseColumn(np.array(fids, dtype=np.int64), np.array(rows, dtype=np.int64))

    def batch(size: int, first: SparseColumn, second: SparseColumn, third: SparseColumn, dense: float) -> ParsedBatch:
        return ParsedBatch(size, (first, second, third), np.full((size, 2), dense, dtype=np.float32))

    empty = column([], [])
    last = batch(3, column([8, 9], [0, 2]), column([40], [1]), empty, 3.0)
    merged = concat_batches(
        [
            batch(2, column([5, 6, 7], [0, 0, 1]), empty, empty, 1.0),
            batch(1, empty, column([30, 31], [0, 0]), empty, 2.0),
            last,
        ]
    )
    assert merged.batch_size == 6
    assert merged.sparse[0].fids.tolist() == [5, 6, 7, 8, 9]
    assert merged.sparse[0].rows.tolist() == [0, 0, 1, 3, 5]
    assert merged.sparse[1].fids.tolist() == [30, 31, 40]
    assert merged.sparse[1].rows.tolist() == [2, 2, 4]
    assert len(merged.sparse[2].fids) == 0 and len(merged.sparse[2].rows) == 0
    assert all(c.fids.dtype == np.int64 and c.rows.dtype == np.int64 for c in merged.sparse)
    assert merged.dense[:, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 3.0, 3.0]
    # The requests' own columns are left as they were (each request may still be answered or retried alone).
    assert last.sparse[0].rows.tolist() == [0, 2] and last.sparse[1].rows.tolist() == [1]


def test_concat_batches_of_a_model_without_sparse_features_stacks_the_dense_inputs() -> None:
    def batch(size: int, dense: float) -> ParsedBatch:
        return ParsedBatch(size, (), np.full((size, 2), dense, dtype=np.float32))

    merged = concat_batches([batch(1, 1.0), batch(2, 2.0)])
    assert merged.batch_size == 3 and merged.sparse == ()
    assert merged.dense[:, 0].tolist() == [1.0, 2.0, 2.0]


def test_predicts_queued_behind_a_running_pass_run_as_one_pass_and_each_gets_its_own_scores(export: Path) -> None:
    async def scenario() -> None:
        lookup = GatedLookup()
        metrics = EntryMetrics()
        model = make_model(export, lookup, RequestCoalescing(), metrics)
        await model.refresh()
        requests = [
            inputs_for(export, "instances", 4, seed=1),
            inputs_for(export, "example_batch", 3, seed=2),
            inputs_for(export, "examples", 5, seed=3),
            inputs_for(export, "instances", 1, seed=4),
        ]
        lookup.gate.clear()
        first = predict(model, requests[0])
        await until(lambda: len(lookup.calls) == 1)
        rest = [predict(model, inputs) for inputs in requests[1:]]
        await asyncio.sleep(0.02)
        assert len(lookup.calls) == 1  # the others wait for the pass in flight
        lookup.gate.set()
        results = await asyncio.gather(first, *rest)
        assert len(lookup.calls) == 2  # the three queued ones went as one pass
        for inputs, result in zip(requests, results, strict=True):
            expected = await alone(export, inputs)
            assert result.outputs["scores"].shape == expected.shape
            np.testing.assert_allclose(result.outputs["scores"], expected, rtol=1e-6)
            assert result.version == 1 and result.ps_versions == {0: 1, 1: 1}
        assert metrics.registry.get_sample_value("entry_predicts_coalesced_total") == 3

    asyncio.run(scenario())


def test_a_bad_request_fails_alone_and_never_joins_a_pass(export: Path) -> None:
    async def scenario() -> None:
        lookup, model = await gated_model(export, RequestCoalescing())
        first = predict(model, inputs_for(export, "instances", 2, 1))
        await until(lambda: len(lookup.calls) == 1)
        good = predict(model, inputs_for(export, "instances", 2, 2))
        bad_inputs = {"instances": np.array([b"\xff\xff not a proto"], dtype=object)}
        with pytest.raises(InvalidArgumentError, match="instances"):
            await predict(model, bad_inputs)
        lookup.gate.set()
        await asyncio.gather(first, good)
        assert good.result().outputs["scores"].shape == (2, 1)

    asyncio.run(scenario())


def test_a_failing_pass_fails_everyone_in_it_and_the_next_request_is_served(export: Path) -> None:
    async def scenario() -> None:
        lookup, model = await gated_model(export, RequestCoalescing())
        lookup.fail = True
        tasks = [predict(model, inputs_for(export, "instances", 2, s)) for s in range(4)]
        await until(lambda: len(lookup.calls) == 1)
        await asyncio.sleep(0.01)
        lookup.gate.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, UnavailableError) for o in outcomes), outcomes
        assert len(lookup.calls) == 2
        lookup.fail = False
        result = await predict(model, inputs_for(export, "instances", 2, 9))
        assert result.outputs["scores"].shape == (2, 1)

    asyncio.run(scenario())


def test_a_queued_request_stops_at_its_own_deadline_while_the_others_are_answered(export: Path) -> None:
    async def scenario() -> None:
        lookup, model = await gated_model(export, RequestCoalescing())
        first = predict(model, inputs_for(export, "instances", 2, 1))
        await until(lambda: len(lookup.calls) == 1)
        patient = predict(model, inputs_for(export, "instances", 2, 2))
        hurried = predict(model, inputs_for(export, "instances", 2, 3), timeout_s=0.05)
        with pytest.raises(DeadlineExceededError, match="deadline passed"):
            await asyncio.wait_for(hurried, timeout=1.0)
        lookup.gate.set()
        await asyncio.gather(first, patient)
        assert patient.result().outputs["scores"].shape == (2, 1)

    asyncio.run(scenario())


def test_a_merged_pass_never_holds_more_than_max_rows(export: Path) -> None:
    async def scenario() -> None:
        lookup, model = await gated_model(export, RequestCoalescing(max_rows=5))
        tasks = [predict(model, inputs_for(export, "examples", 3, s)) for s in range(5)]
        # 3 + 3 > 5: each queued request of 3 examples goes on its own once the next one arrives, without waiting.
        await until(lambda: len(lookup.calls) >= 4)
        lookup.gate.set()
        results = await asyncio.gather(*tasks)
        assert len(lookup.calls) == 5
        assert [r.outputs["scores"].shape for r in results] == [(3, 1)] * 5

    asyncio.run(scenario())


def test_a_merged_pass_keeps_the_earliest_ps_deadline_as_its_urgent_one() -> None:
    short = PassDeadlines(ps=5.0, client=5.0, dense_default_s=0.2)
    long = PassDeadlines(ps=20.0, client=20.0, dense_default_s=0.2)
    merged = PassDeadlines.merged([long, short])
    assert (merged.ps, merged.ps_urgent, merged.client) == (20.0, 5.0, 20.0)
    assert PassDeadlines.merged([long, long]).ps_urgent is None  # nothing sooner than the pass's own deadline
