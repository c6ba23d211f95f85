"""Reading a version's dumps from disk (``ps.loader``), and what a version without any dump of the PS's partition
does: it fails to load, and the version serving before it keeps serving."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.hash_table_dump import format_dump_filename, write_dump
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.ps.core import ModelRef, PsCore, replay_updates
from monolith_serving.ps.loader import load_version
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.version_manager import State, VersionStateManager

EXPECTED = "MonolithHashTable_<table>_1-<jjjjj>-of-<mmmmm>"


def _assets(tmp_path: Path, version: int = 1) -> Path:
    assets = tmp_path / "ps_1" / str(version) / "assets"
    assets.mkdir(parents=True)
    return assets


def _write(assets: Path, table: str, partition: int, fids: list[int], dim: int, fill: float) -> None:
    values = np.full((len(fids), dim), fill, np.float32)
    write_dump(assets / format_dump_filename(table, partition, 0, 1), np.array(fids, np.int64), values)


def test_a_version_without_dumps_of_its_partition_fails_naming_the_folder_and_the_names_expected(
    tmp_path: Path,
) -> None:
    assets = _assets(tmp_path)
    (assets / "vocab.txt").write_text("unrelated asset\n")
    with pytest.raises(NotFoundError) as error:
        load_version(assets.parent, 1)
    assert str(assets) in error.value.message and EXPECTED in error.value.message
    assert status_code_for(error.value).name == "NOT_FOUND"
    # Dumps of other partitions only (a sub-model pointed at the wrong folder): said so.
    _write(assets, "t", 0, [2, 4], 2, 1.0)
    _write(assets, "t", 2, [5], 2, 1.0)
    with pytest.raises(NotFoundError, match=r"partition\(s\) \[0, 2\] only"):
        load_version(assets.parent, 1)


def test_dump_named_fifos_are_no_dumps(tmp_path: Path) -> None:
    """The shutdown audit's version: assets/ held only FIFOs named like dumps. They are skipped (never opened),
    and with nothing else the load fails instead of publishing a version with no tables."""
    assets = _assets(tmp_path)
    os.mkfifo(assets / format_dump_filename("t", 1, 0, 1))
    with pytest.raises(NotFoundError, match=r"1 dump-named entries are not regular files"):
        load_version(assets.parent, 1)


def test_broken_native_multi_hash_table_dumps_fail_naming_the_file(tmp_path: Path) -> None:
    """Native dumps are read (tests/unit/test_native_multi_dump.py); ones that are not snappy TFRecords fail to load
    with INVALID_ARGUMENT naming the file, as a corrupt per-table dump does."""
    assets = _assets(tmp_path)
    for name in ("MonolithMultiHashTable_1-00000-of-00001", "MonolithMultiHashTable_1.meta-00000-of-00001"):
        (assets / name).write_bytes(b"\x00" * 16)
    with pytest.raises(InvalidArgumentError) as error:
        load_version(assets.parent, 1)
    assert "MonolithMultiHashTable_1" in error.value.message and str(assets) in error.value.message
    assert status_code_for(error.value).name == "INVALID_ARGUMENT"


def test_empty_dump_files_still_load(tmp_path: Path) -> None:
    """REFERENCE §2: an empty dump file is valid (a shard with no rows); only no file at all fails."""
    assets = _assets(tmp_path)
    for j in range(2):
        write_dump(assets / format_dump_filename("t", 1, j, 2), np.empty(0, np.int64), np.empty((0, 4), np.float32))
    tables = load_version(assets.parent, 1)
    assert set(tables.tables) == {"t"} and tables.rows == 0 and tables.tables["t"].dim == 0


def test_a_version_without_dumps_does_not_replace_the_serving_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        _write(_assets(tmp_path, 1), "t", 1, [1, 3], 2, 1.0)
        metrics = PsMetrics(CollectorRegistry())
        manager = VersionStateManager(metrics=metrics, executor=ThreadPoolExecutor(1), replay=replay_updates)
        core = PsCore(versions=manager, metrics=metrics, num_ps=2, max_fids_per_request=100)
        config = SubModelConfig("ps_1", tmp_path / "ps_1", VersionPolicy(PolicyKind.LATEST, 1))
        await manager.apply_config([config])
        assets2 = _assets(tmp_path, 2)
        for name in ("MonolithMultiHashTable_0-00000-of-00001", "MonolithMultiHashTable_0.meta-00000-of-00001"):
            (assets2 / name).write_bytes(b"")  # another partition's native dump: nothing of ps_1's own
        await manager.refresh()
        status = {s.version: s for s in manager.status("ps_1")}
        assert status[2].state is State.END and status[2].error is not None
        assert str(assets2) in status[2].error.message and "partition(s) [0] only" in status[2].error.message
        assert status[1].state is State.AVAILABLE
        result = core.lookup(ModelRef("ps_1"), {"t_id": to_tensor_proto(np.array([3, 5], np.int64))})
        assert result.version == 1 and result.outputs["t_value"].tolist() == [[1, 1], [0, 0]]

    asyncio.run(scenario())
