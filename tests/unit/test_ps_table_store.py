"""EmbeddingTable / FidIndex: lookup correctness, zeros for unknown fids, upsert semantics, memory per row."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.ps.fid_index import FidIndex, last_occurrences
from monolith_serving.ps.table_store import EmbeddingTable


def _table(n: int, dim: int, seed: int = 0) -> tuple[EmbeddingTable, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fids = np.unique((np.int64(3) << 48) | rng.integers(0, 1 << 48, n, dtype=np.int64))
    rng.shuffle(fids)
    values = rng.standard_normal((len(fids), dim), dtype=np.float32)
    return EmbeddingTable("t", fids, values.copy()), fids, values


def test_fid_index_maps_positions_and_reports_absent_keys() -> None:
    fids = np.array([7, -3, 1 << 62, 0], dtype=np.int64)
    index = FidIndex.of(fids)
    assert len(index) == 4
    assert index.lookup(np.array([0, 7, 5, -3, 1 << 62], dtype=np.int64)).tolist() == [3, 0, -1, 1, 2]
    index.insert(np.array([5, 7], dtype=np.int64), np.array([10, 11], dtype=np.int64))
    assert index.lookup(np.array([5, 7], dtype=np.int64)).tolist() == [10, 11]
    assert index.lookup(np.empty(0, dtype=np.int64)).shape == (0,)


def test_fid_index_matches_a_dict_through_growth_collisions_and_extreme_keys() -> None:
    # Keys on one stride collide in the low bits and the extremes of int64 are valid fids; inserting in small
    # batches from an empty index forces several doublings (rehashes) of the slot array.
    rng = np.random.default_rng(7)
    keys = np.concatenate(
        [
            np.array([0, -1, np.iinfo(np.int64).min, np.iinfo(np.int64).max], dtype=np.int64),
            np.arange(0, 1 << 40, 1 << 24, dtype=np.int64)[:3000],
            rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 5000, dtype=np.int64),
        ]
    )
    index = FidIndex()
    expected: dict[int, int] = {}
    capacities = set()
    for start in range(0, len(keys), 257):
        batch = keys[start : start + 257]
        rows = rng.integers(0, 1 << 40, len(batch), dtype=np.int64)
        index.insert(batch, rows)
        expected.update(zip(batch.tolist(), rows.tolist(), strict=True))
        capacities.add(index.nbytes)
    assert len(capacities) > 3, "the index never grew"
    assert len(index) == len(expected)
    probe = np.concatenate([keys, np.array([12345, -(1 << 50)], dtype=np.int64)])
    assert index.lookup(probe).tolist() == [expected.get(k, -1) for k in probe.tolist()]
    assert index.nbytes <= 46 * len(index) + 16 * 16  # load factor stays above 0.35 once past the minimum size


def test_fid_index_accepts_read_only_request_buffers() -> None:
    # Request tensors are np.frombuffer views of the request bytes: read-only, and must not be copied to be probed.
    fids = np.frombuffer(np.array([9, 8, 7], dtype=np.int64).tobytes(), dtype=np.int64)
    assert not fids.flags.writeable
    index = FidIndex.of(fids)
    assert index.lookup(fids[::-1].copy()).tolist() == [2, 1, 0]
    assert index.lookup(fids).tolist() == [0, 1, 2]


def test_last_occurrences_keeps_the_last_of_each_fid() -> None:
    assert last_occurrences(np.array([4, 5, 4, 6, 5], dtype=np.int64)).tolist() == [2, 3, 4]
    assert last_occurrences(np.array([1, 2], dtype=np.int64)).tolist() == [0, 1]


def test_lookup_returns_written_rows_and_zeros_for_unknown_fids() -> None:
    table, fids, values = _table(5000, 33)
    rng = np.random.default_rng(1)
    pick = rng.integers(0, len(fids), 700)
    unknown = np.array([12345, -(1 << 40), (np.int64(9) << 48) | 1], dtype=np.int64)
    query = np.concatenate([fids[pick], unknown])
    out, missing = table.lookup(query)
    assert out.shape == (len(query), 33) and out.dtype == np.float32
    np.testing.assert_array_equal(out[: len(pick)], values[pick])
    assert missing == 3 and not out[len(pick) :].any()


def test_duplicate_fids_in_a_dump_keep_the_last_row() -> None:
    fids = np.array([1, 2, 1], dtype=np.int64)
    values = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    table = EmbeddingTable("t", fids, values)
    assert table.rows == 2
    out, _ = table.lookup(np.array([1, 2], dtype=np.int64))
    assert out[:, 0].tolist() == [3.0, 2.0]


def test_upsert_updates_in_place_and_appends_new_fids() -> None:
    table, fids, values = _table(100, 4)
    new_fids = np.arange(1, 3001, dtype=np.int64) * 7  # more than one growth of the extra block
    update_fids = np.concatenate([fids[:10], new_fids])
    update_values = np.random.default_rng(2).standard_normal((len(update_fids), 4), dtype=np.float32)
    table.upsert(update_fids, update_values)
    assert table.rows == len(fids) + len(new_fids)
    out, missing = table.lookup(np.concatenate([update_fids, fids[10:]]))
    assert missing == 0
    np.testing.assert_array_equal(out[: len(update_fids)], update_values)
    np.testing.assert_array_equal(out[len(update_fids) :], values[10:])
    # A second write to an extra row lands in place.
    table.upsert(new_fids[:1], np.full((1, 4), 9.0, dtype=np.float32))
    assert table.lookup(new_fids[:1])[0].tolist() == [[9.0] * 4]


def test_upsert_with_repeated_fids_keeps_the_last_row() -> None:
    table, fids, _ = _table(10, 2)
    f = np.array([fids[0], 99, fids[0], 99], dtype=np.int64)
    v = np.array([[1, 1], [2, 2], [3, 3], [4, 4]], dtype=np.float32)
    table.upsert(f, v)
    out, _ = table.lookup(np.array([fids[0], 99], dtype=np.int64))
    assert out.tolist() == [[3, 3], [4, 4]]


def test_upsert_into_an_empty_table() -> None:
    table = EmbeddingTable("t", np.empty(0, dtype=np.int64), np.empty((0, 3), dtype=np.float32))
    assert table.lookup(np.array([5], dtype=np.int64))[1] == 1
    table.upsert(np.array([5], dtype=np.int64), np.ones((1, 3), dtype=np.float32))
    out, missing = table.lookup(np.array([5, 6], dtype=np.int64))
    assert missing == 1 and out.tolist() == [[1, 1, 1], [0, 0, 0]]


def test_update_of_the_wrong_dim_is_refused_before_anything_changes() -> None:
    table, fids, values = _table(10, 4)
    with pytest.raises(InvalidArgumentError, match=r"\[1, 4\]"):
        table.upsert(fids[:1], np.zeros((1, 5), dtype=np.float32))
    np.testing.assert_array_equal(table.lookup(fids)[0], values)


def test_memory_per_row_is_within_1_3x_raw_for_dim_32() -> None:
    table, fids, _ = _table(200_000, 32)
    raw = len(fids) * (32 * 4 + 8)
    assert table.nbytes <= 1.3 * raw, table.nbytes / raw


def test_kernels_compile_without_a_writable_cache_directory() -> None:
    # A pod with a read-only root filesystem and no home: numba finds no cache location and raises at
    # decoration; the PS must still import (compiling in memory). Simulated by making every locator fail.
    code = """
import numba.core.caching as caching
def unwritable(self):
    raise OSError("read-only file system")
caching._CacheLocator.ensure_cache_path = unwritable
import subprocess
import sys

import numpy as np
from monolith_serving.ps.fid_index import FidIndex
print(FidIndex.of(np.array([5, 6], dtype=np.int64)).lookup(np.array([6, 7], dtype=np.int64)).tolist())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[1, -1]"


def test_a_table_loaded_without_rows_takes_the_dim_of_its_first_update() -> None:
    # Every dump file of the partition empty (REFERENCE §2 allows it): the width is unknown until a sync.
    table = EmbeddingTable("t", np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32))
    out, missing = table.lookup(np.array([5, 7], dtype=np.int64))
    assert out.shape == (2, 0) and missing == 2
    assert table.fits(np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32))
    assert not table.fits(np.array([5], dtype=np.int64), np.empty((1, 0), dtype=np.float32))
    table.upsert(np.array([5], dtype=np.int64), np.full((1, 3), 2, dtype=np.float32))
    assert table.dim == 3
    out, missing = table.lookup(np.array([5, 7], dtype=np.int64))
    assert missing == 1 and out.tolist() == [[2, 2, 2], [0, 0, 0]]
    with pytest.raises(InvalidArgumentError, match=r"\[1, 3\]"):
        table.upsert(np.array([9], dtype=np.int64), np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="width 0"):
        EmbeddingTable("t", np.array([1], dtype=np.int64), np.empty((1, 0), dtype=np.float32))
