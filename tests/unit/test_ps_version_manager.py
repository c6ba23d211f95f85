"""VersionStateManager + PsCore without gRPC: states, switch-over, failed loads, sync during a load."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError, UnavailableError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.framework.tensor_pb2 import TensorProto
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.ps.core import ModelRef, PsCore, replay_updates
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.table_store import EmbeddingTable, TableSet
from monolith_serving.ps.version_manager import State, VersionStateManager


class FakeLoader:
    """Builds a one-table TableSet whose rows are ``version`` everywhere; versions in ``fail`` raise;
    versions in ``gate`` wait until released (to observe LOADING)."""

    def __init__(self) -> None:
        self.fail: set[int] = set()
        self.gate: dict[int, threading.Event] = {}

    def __call__(self, config: SubModelConfig, version: int) -> TableSet:
        if version in self.gate:
            self.gate[version].wait(10)
        if version in self.fail:
            raise InvalidArgumentError(f"corrupt dump of version {version}")
        fids = np.arange(0, 20, 2, dtype=np.int64)
        return TableSet({"t": EmbeddingTable("t", fids, np.full((len(fids), 2), version, dtype=np.float32))})


def _setup(tmp_path: Path, versions: list[int]) -> tuple[VersionStateManager, PsCore, FakeLoader, SubModelConfig]:
    for v in versions:
        (tmp_path / "ps_0" / str(v)).mkdir(parents=True)
    loader = FakeLoader()
    metrics = PsMetrics(CollectorRegistry())
    manager = VersionStateManager(metrics=metrics, executor=ThreadPoolExecutor(1), replay=replay_updates, loader=loader)
    core = PsCore(versions=manager, metrics=metrics, num_ps=2, max_fids_per_request=100)
    config = SubModelConfig("ps_0", tmp_path / "ps_0", VersionPolicy(PolicyKind.LATEST, 1), {"stable": 1})
    return manager, core, loader, config


def _lookup(core: PsCore, fids: list[int], version: int | None = None) -> tuple[int, list[list[float]]]:
    result = core.lookup(ModelRef("ps_0", version), {"t_id": to_tensor_proto(np.array(fids, dtype=np.int64))})
    return result.version, result.outputs["t_value"].tolist()


def test_load_switch_and_unload(tmp_path: Path) -> None:
    async def scenario() -> None:
        manager, core, loader, config = _setup(tmp_path, [1])
        with pytest.raises(NotFoundError):
            manager.model("ps_0")
        await manager.apply_config([config])
        assert [(s.version, s.state) for s in manager.status("ps_0")] == [(1, State.AVAILABLE)]
        assert _lookup(core, [2, 30]) == (1, [[1, 1], [0, 0]])
        # Version 2 appears; while it loads, version 1 keeps answering.
        (tmp_path / "ps_0" / "2").mkdir()
        loader.gate[2] = threading.Event()
        refresh = asyncio.create_task(manager.refresh())
        await asyncio.sleep(0.05)
        assert manager.status("ps_0", 2)[0].state is State.LOADING
        assert _lookup(core, [2]) == (1, [[1, 1]])
        loader.gate[2].set()
        await refresh
        assert [(s.version, s.state) for s in manager.status("ps_0")] == [(2, State.AVAILABLE), (1, State.END)]
        assert _lookup(core, [2]) == (2, [[2, 2]])
        with pytest.raises(NotFoundError, match="version 1"):
            _lookup(core, [2], version=1)

    asyncio.run(scenario())


def test_failed_load_goes_end_and_the_old_version_keeps_serving(tmp_path: Path) -> None:
    async def scenario() -> None:
        manager, core, loader, config = _setup(tmp_path, [1])
        await manager.apply_config([config])
        (tmp_path / "ps_0" / "2").mkdir()
        loader.fail.add(2)
        await manager.refresh()
        status = {s.version: s for s in manager.status("ps_0")}
        assert status[2].state is State.END and "corrupt dump" in str(status[2].error)
        assert status[1].state is State.AVAILABLE
        assert _lookup(core, [4]) == (1, [[1, 1]])
        await manager.refresh()  # not retried by polling
        assert manager.status("ps_0", 2)[0].state is State.END

    asyncio.run(scenario())


def test_sync_during_a_load_reaches_the_new_version(tmp_path: Path) -> None:
    async def scenario() -> None:
        manager, core, loader, config = _setup(tmp_path, [1])
        await manager.apply_config([config])
        (tmp_path / "ps_0" / "2").mkdir()
        loader.gate[2] = threading.Event()
        refresh = asyncio.create_task(manager.refresh())
        await asyncio.sleep(0.05)
        push = {"t_id": to_tensor_proto(np.array([4, 100], np.int64)),
                "t_value": to_tensor_proto(np.array([[7, 7], [8, 8]], np.float32))}  # fmt: skip
        assert core.sync(ModelRef("ps_0"), "hashtable_assign", push) == (1, 2)
        assert _lookup(core, [4, 100]) == (1, [[7, 7], [8, 8]])
        loader.gate[2].set()
        await refresh
        assert _lookup(core, [4, 100, 6]) == (2, [[7, 7], [8, 8], [2, 2]])

    asyncio.run(scenario())


def test_past_its_bound_a_loading_versions_queue_is_dropped_and_pushes_still_reach_the_serving_version(
    tmp_path: Path,
) -> None:
    """A load that never ends must not queue pushes until memory runs out. Past the bound a push is still taken (the
    serving version gets it: Monolith's trainer never sends a refused push again) and the new version starts from
    its export, as Monolith's PS always does; the rows it missed are counted."""

    async def scenario() -> None:
        manager, _, loader, config = _setup(tmp_path, [1])
        metrics = PsMetrics(CollectorRegistry())
        one_push = 2 * 8 + 2 * 2 * 4  # 2 fids (int64) + 2 rows of dim 2 (float32)
        core = PsCore(
            versions=manager, metrics=metrics, num_ps=2, max_fids_per_request=100, max_pending_sync_bytes=2 * one_push
        )
        await manager.apply_config([config])
        (tmp_path / "ps_0" / "2").mkdir()
        loader.gate[2] = threading.Event()
        refresh = asyncio.create_task(manager.refresh())
        await asyncio.sleep(0.05)

        def push(fid: int, value: float) -> dict[str, TensorProto]:
            return {"t_id": to_tensor_proto(np.array([fid, fid + 100], np.int64)),
                    "t_value": to_tensor_proto(np.full((2, 2), value, np.float32))}  # fmt: skip

        def not_replayed() -> float:
            return metrics.sync_rows_not_replayed.labels("ps_0")._value.get()  # type: ignore[no-any-return]

        assert core.sync(ModelRef("ps_0"), "hashtable_assign", push(4, 7)) == (1, 2)
        assert core.sync(ModelRef("ps_0"), "hashtable_assign", push(6, 8)) == (1, 2)
        assert not_replayed() == 0
        # Past the bound: taken and served at once, the queue dropped; later pushes are not queued either.
        assert core.sync(ModelRef("ps_0"), "hashtable_assign", push(8, 9)) == (1, 2)
        assert core.sync(ModelRef("ps_0"), "hashtable_assign", push(10, 5)) == (1, 2)
        assert _lookup(core, [4, 8, 110]) == (1, [[7, 7], [9, 9], [5, 5]])
        assert not_replayed() == 8
        loader.gate[2].set()
        await refresh
        assert _lookup(core, [4, 6, 8, 10, 104]) == (2, [[2, 2], [2, 2], [2, 2], [2, 2], [0, 0]])
        # Served, the new version takes pushes as any.
        assert core.sync(ModelRef("ps_0"), "hashtable_assign", push(8, 9)) == (2, 2)
        assert _lookup(core, [8]) == (2, [[9, 9]])

    asyncio.run(scenario())


def test_a_push_before_the_load_started_is_not_carried_into_the_new_version(tmp_path: Path) -> None:
    """docs/ps.md: a version switch keeps every push acknowledged from the start of the new version's load on;
    rows pushed into the old version before that are replaced by the new export (which holds them if it was
    exported after them)."""

    async def scenario() -> None:
        manager, core, loader, config = _setup(tmp_path, [1])
        await manager.apply_config([config])
        before = {
            "t_id": to_tensor_proto(np.array([4], np.int64)),
            "t_value": to_tensor_proto(np.full((1, 2), 5.0, np.float32)),
        }
        core.sync(ModelRef("ps_0"), "hashtable_assign", before)
        (tmp_path / "ps_0" / "2").mkdir()
        loader.gate[2] = threading.Event()
        refresh = asyncio.create_task(manager.refresh())
        await asyncio.sleep(0.05)
        during = {
            "t_id": to_tensor_proto(np.array([6], np.int64)),
            "t_value": to_tensor_proto(np.full((1, 2), 7.0, np.float32)),
        }
        core.sync(ModelRef("ps_0"), "hashtable_assign", during)
        loader.gate[2].set()
        await refresh
        assert _lookup(core, [4, 6]) == (2, [[2, 2], [7, 7]])  # 4: the export's row; 6: replayed

    asyncio.run(scenario())


def test_requests_before_any_version_and_unknown_labels(tmp_path: Path) -> None:
    async def scenario() -> None:
        manager, core, loader, config = _setup(tmp_path, [1])
        loader.fail.add(1)
        await manager.apply_config([config])
        with pytest.raises(UnavailableError):
            _lookup(core, [2])
        with pytest.raises(NotFoundError, match="label 'canary'"):
            manager.resolve("ps_0", label="canary")
        await manager.apply_config([])
        with pytest.raises(NotFoundError):
            manager.status("ps_0")

    asyncio.run(scenario())
