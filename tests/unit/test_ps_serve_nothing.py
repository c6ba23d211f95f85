"""An explicit empty ``specific {}`` policy makes the PS unload every version of the sub-model (the model
manager's abort of a failed first rollout relies on it); other policies with nothing to load keep serving."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.ps.core import replay_updates
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.table_store import EmbeddingTable, TableSet
from monolith_serving.ps.version_manager import State, VersionStateManager


def _tables(config: SubModelConfig, version: int) -> TableSet:
    fids = np.arange(4, dtype=np.int64)
    return TableSet({"t": EmbeddingTable("t", fids, np.full((4, 2), version, dtype=np.float32))})


def _manager() -> VersionStateManager:
    metrics = PsMetrics(CollectorRegistry())
    return VersionStateManager(metrics=metrics, executor=ThreadPoolExecutor(1), replay=replay_updates, loader=_tables)


def _states(manager: VersionStateManager) -> list[tuple[int, State]]:
    return [(s.version, s.state) for s in manager.status("ps_0")]


def test_empty_specific_unloads_every_version(tmp_path: Path) -> None:
    for version in (1, 2):
        (tmp_path / "ps_0" / str(version)).mkdir(parents=True)

    def config(policy: VersionPolicy) -> SubModelConfig:
        return SubModelConfig("ps_0", tmp_path / "ps_0", policy)

    async def scenario() -> None:
        manager = _manager()
        await manager.apply_config([config(VersionPolicy(PolicyKind.SPECIFIC, versions=(1, 2)))], fresh=True)
        assert _states(manager) == [(2, State.AVAILABLE), (1, State.AVAILABLE)]
        # specific {3}: 3 is not on disk, nothing wanted is AVAILABLE -> 1 and 2 keep serving (safety).
        await manager.apply_config([config(VersionPolicy(PolicyKind.SPECIFIC, versions=(3,)))], fresh=True)
        assert _states(manager) == [(2, State.AVAILABLE), (1, State.AVAILABLE)]
        # specific {}: serve nothing; the sub-model stays hosted (GetModelStatus answers) with no version.
        await manager.apply_config([config(VersionPolicy(PolicyKind.SPECIFIC))], fresh=True)
        assert _states(manager) == [(2, State.END), (1, State.END)]
        assert manager.model("ps_0").serving() is None
        # A file-system poll does not bring anything back under specific {}.
        await manager.refresh()
        assert manager.model("ps_0").serving() is None

    asyncio.run(scenario())


def test_latest_with_an_empty_folder_keeps_serving(tmp_path: Path) -> None:
    (tmp_path / "ps_0" / "1").mkdir(parents=True)

    async def scenario() -> None:
        manager = _manager()
        await manager.apply_config([SubModelConfig("ps_0", tmp_path / "ps_0", VersionPolicy(PolicyKind.LATEST))])
        (tmp_path / "ps_0" / "1").rmdir()  # e.g. retention raced a reload: nothing on disk is not "serve nothing"
        await manager.refresh()
        assert _states(manager) == [(1, State.AVAILABLE)]

    asyncio.run(scenario())
