"""The PS's versions: ``core.version_lifecycle`` holding TableSets, with parameter-sync replay on publish.

A version loads its hash-table dumps into a fresh TableSet on a worker thread. Sync batches that arrive
meanwhile are validated and queued on the loading version (``PsCore.sync``); publishing replays them into
the new tables right before it goes AVAILABLE, in the same synchronous step, so no update acknowledged after the
load started is lost across a version switch. Updates applied to the old version before that are not carried
over: the new export replaces them (docs/ps.md, "Across a version switch").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor

from monolith_serving.core.export_layout import version_dir
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.version_lifecycle import HostedModel, LifecycleHooks, Servable, VersionLifecycle
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.ps.loader import load_version
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.sync import TableUpdate
from monolith_serving.ps.table_store import TableSet

State = ModelState  # the PS names it State throughout

SyncBatch = list[TableUpdate]
ServableVersion = Servable[TableSet, SyncBatch]
SubModel = HostedModel[SubModelConfig, TableSet, SyncBatch]

Loader = Callable[[SubModelConfig, int], TableSet]
ReplayFn = Callable[[TableSet, SyncBatch, str], None]


def _load_from_disk(config: SubModelConfig, version: int) -> TableSet:
    return load_version(version_dir(config.base_path, version), config.partition)


class VersionStateManager(VersionLifecycle[SubModelConfig, TableSet, SyncBatch]):
    """Loads, publishes and unloads sub-model versions per policy; ``replay`` applies one queued sync batch."""

    def __init__(
        self,
        *,
        metrics: PsMetrics,
        executor: Executor,
        replay: ReplayFn,
        loader: Loader = _load_from_disk,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        def publish(tables: TableSet, pending: list[SyncBatch], model: str) -> None:
            for batch in pending:
                replay(tables, batch, model)

        def published(model: str, version: int, tables: TableSet, elapsed_s: float) -> str:
            metrics.load_duration.labels(model).observe(elapsed_s)
            for name, table in tables.tables.items():
                metrics.table_rows.labels(model, str(version), name).set(table.rows)
                metrics.table_bytes.labels(model, str(version), name).set(table.nbytes)
            return f"{len(tables.tables)} tables, {tables.rows} rows, {tables.nbytes} bytes"

        def unloaded(model: str, version: int, tables: TableSet | None) -> None:
            metrics.forget_version(model, version, list(tables.tables) if tables is not None else [])

        super().__init__(
            hooks=LifecycleHooks(
                load=loader,
                published=published,
                unloaded=unloaded,
                removed=metrics.forget_model,
                publish=publish,
            ),
            metrics=metrics,
            executor=executor,
            clock=clock,
        )
