"""A sub-model removed from the PS (a v3 layout moving ``model:ps_i`` elsewhere, a retired model) leaves no
Prometheus series behind, and one added again counts from fresh series."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.ps.core import ModelRef, PsCore, replay_updates
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.table_store import EmbeddingTable, TableSet
from monolith_serving.ps.version_manager import VersionStateManager

BROKEN_VERSION = 2


def _load(config: SubModelConfig, version: int) -> TableSet:
    if version == BROKEN_VERSION:
        raise InvalidArgumentError(f"corrupt dump of version {version}")
    fids = np.arange(10, dtype=np.int64)
    return TableSet({"t": EmbeddingTable("t", fids, np.ones((10, 2), dtype=np.float32))})


def _config(root: Path, name: str) -> SubModelConfig:
    for version in (1, BROKEN_VERSION):
        (root / name / str(version)).mkdir(parents=True, exist_ok=True)
    # Both versions wanted: 2 fails (a load_failures series), 1 serves.
    return SubModelConfig(name, root / name, VersionPolicy(PolicyKind.LATEST, 2))


def _model_series(registry: CollectorRegistry, model: str) -> list[str]:
    return sorted({s.name for family in registry.collect() for s in family.samples if s.labels.get("model") == model})


def _serve(core: PsCore, model: str) -> None:
    """One lookup (one fid missing), one applied and one rejected sync push."""
    core.lookup(ModelRef(model), {"t_id": to_tensor_proto(np.array([1, 99], np.int64))})
    push = {"t_id": to_tensor_proto(np.array([3], np.int64)), "t_value": to_tensor_proto(np.ones((1, 2), np.float32))}
    core.sync(ModelRef(model), "hashtable_assign", push)
    with pytest.raises(InvalidArgumentError):
        core.sync(ModelRef(model), "hashtable_assign", {"t_id": push["t_id"]})


def test_a_removed_model_leaves_no_series_and_counts_afresh_when_added_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = PsMetrics(registry)
        manager = VersionStateManager(
            metrics=metrics, executor=ThreadPoolExecutor(1), replay=replay_updates, loader=_load
        )
        core = PsCore(versions=manager, metrics=metrics, num_ps=0, max_fids_per_request=100)
        a, b = _config(tmp_path, "exp:ps_0"), _config(tmp_path, "other:ps_0")
        await manager.apply_config([a, b])
        _serve(core, "exp:ps_0")
        _serve(core, "other:ps_0")
        every_series = _model_series(registry, "other:ps_0")
        assert _model_series(registry, "exp:ps_0") == every_series
        for name in ("lookup_requests", "lookup_fids", "lookup_missing_fids", "sync_updates_applied",
                     "sync_updates_rejected", "load_failures"):  # fmt: skip
            assert f"monolith_ps_{name}_total" in every_series, name
        assert "monolith_ps_load_duration_seconds_count" in every_series
        assert "monolith_ps_table_rows" in every_series

        await manager.apply_config([b])  # the layout moved exp:ps_0 to another container

        assert _model_series(registry, "exp:ps_0") == []
        assert _model_series(registry, "other:ps_0") == every_series  # the model kept is untouched

        await manager.apply_config([a, b])  # ... and back here
        core.lookup(ModelRef("exp:ps_0"), {"t_id": to_tensor_proto(np.array([1, 2, 99], np.int64))})

        def value(metric: str, **labels: str) -> float | None:
            return registry.get_sample_value(f"monolith_ps_{metric}", {"model": "exp:ps_0", **labels})

        assert value("lookup_requests_total") == 1  # fresh series, written through fresh children
        assert value("lookup_fids_total", table="t") == 3
        assert value("lookup_missing_fids_total", table="t") == 1
        assert value("load_failures_total") == 1
        assert value("load_duration_seconds_count") == 1
        assert value("sync_updates_applied_total", signature="hashtable_assign") is None
        assert registry.get_sample_value("monolith_ps_lookup_requests_total", {"model": "other:ps_0"}) == 1

    asyncio.run(scenario())
