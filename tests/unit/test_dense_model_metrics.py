"""A dense sub-model removed from the dense server leaves no Prometheus series behind (its failed loads
included), and one added again counts from fresh series."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry

from monolith_serving.core.model_state import ModelState
from monolith_serving.dense.config import DenseModelConfig
from monolith_serving.dense.metrics import DenseMetrics
from monolith_serving.dense.versions import DenseNetwork, DenseVersionManager


def _broken(path: Path) -> DenseNetwork:
    raise ValueError(f"no dense_spec.json in {path}")


def _model_series(registry: CollectorRegistry, model: str) -> list[str]:
    return sorted({s.name for family in registry.collect() for s in family.samples if s.labels.get("model") == model})


def test_a_removed_model_leaves_no_series_and_counts_afresh_when_added_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        manager = DenseVersionManager(metrics=DenseMetrics(registry), executor=ThreadPoolExecutor(1), loader=_broken)
        (tmp_path / "dense_0" / "1").mkdir(parents=True)
        config = DenseModelConfig("exp:dense_0", tmp_path / "dense_0")
        await manager.apply_config([config])
        assert [s.state for s in manager.status("exp:dense_0")] == [ModelState.END]
        assert {"monolith_dense_load_failures_total", "monolith_dense_version_state"} <= set(
            _model_series(registry, "exp:dense_0")
        )

        await manager.apply_config([])
        assert _model_series(registry, "exp:dense_0") == []

        await manager.apply_config([config])
        assert registry.get_sample_value("monolith_dense_load_failures_total", {"model": "exp:dense_0"}) == 1

    asyncio.run(scenario())
