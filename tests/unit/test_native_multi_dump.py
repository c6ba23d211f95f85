"""Monolith's native multi-hash-table dumps (``MonolithMultiHashTable_<k>-<j>-of-<m>`` + ``.meta``), read from files
TensorFlow's own SNAPPY record writer produced (tests/unit/data/native_multi_hash_table, see its README), and the PS
serving them."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import cramjam
import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.hash_table_dump import find_native_dump_files, format_dump_filename, write_dump
from monolith_serving.core.native_multi_dump import NativeDumpError, read_native_dump, read_native_metadata
from monolith_serving.core.tfrecord import SnappyBlockStream, TFRecordCorruptError, frame_record, write_records
from monolith_serving.proto_gen.monolith.hash_table import entry_dump_pb2, multi_hash_table_metadata_pb2
from monolith_serving.ps.loader import load_version

DATA = Path(__file__).parent / "data" / "native_multi_hash_table"
VERSION = DATA / "ps_1" / "1700000000"
EXPECTED = json.loads((DATA / "ps_1" / "expected.json").read_text())


def _copy_version(tmp_path: Path) -> Path:
    version = tmp_path / "ps_1" / "1700000000"
    shutil.copytree(VERSION, version)
    return version


def _meta(*counts: tuple[str, int]) -> list[bytes]:
    return [
        multi_hash_table_metadata_pb2.MultiHashTableMetadata(table_name=t, num_entries=n).SerializeToString()
        for t, n in counts
    ]


def _write_snappy_records(path: Path, records: list[bytes]) -> None:
    """TF's SNAPPY record framing as the fixtures show it: ``uint32 BE length | raw snappy`` blocks."""
    stream = b"".join(frame_record(r) for r in records)
    raw = bytes(cramjam.snappy.compress_raw(stream)) if stream else b""
    path.write_bytes(struct.pack(">I", len(raw)) + raw if raw else b"")


def _row(fid: int, values: list[float]) -> bytes:
    return entry_dump_pb2.EntryDump(id=fid, num=values).SerializeToString()


def test_metadata_message_matches_monolith() -> None:
    """monolith/native_training/runtime/hash_table/embedding_hash_table.proto: MultiHashTableMetadata
    {optional string table_name = 1; optional uint64 num_entries = 2;} in package monolith.hash_table."""
    descriptor = multi_hash_table_metadata_pb2.MultiHashTableMetadata.DESCRIPTOR
    assert descriptor.full_name == "monolith.hash_table.MultiHashTableMetadata"
    fields = {f.name: (f.number, f.type) for f in descriptor.fields}
    assert fields == {"table_name": (1, 9), "num_entries": (2, 4)}  # TYPE_STRING, TYPE_UINT64


def test_tf_snappy_framing_decodes_to_the_tfrecord_stream() -> None:
    path = DATA / "multi_block" / "MonolithMultiHashTable_0-00000-of-00001"
    with open(path, "rb") as f:
        stream = SnappyBlockStream(f, str(path))
        assert stream.block_count > 1  # TF's 256 KiB input buffer: records cross block boundaries
        data = bytearray(stream.size_bytes + 10)
        assert stream.readinto(memoryview(data)) == stream.size_bytes
    # The decompressed bytes are plain TFRecords: 9 rows (3 tables of 3), the wide ones 30000 floats each.
    tables = read_native_dump(find_native_dump_files(path.parent, 0))
    assert list(tables) == ["a_small", "b_wide", "c_small"]
    ids, values = tables["b_wide"]
    pattern = (np.arange(30000) % 4).astype(np.float32) * 0.25
    assert ids.tolist() == [100, 102, 104]
    assert np.array_equal(values, np.stack([pattern + k for k in range(3)]))
    assert tables["a_small"][0].tolist() == [0, 2, 4] and tables["c_small"][1][2].tolist() == [2.0, 2.5]


def test_meta_splits_rows_into_tables_and_parts_are_unioned() -> None:
    parts = find_native_dump_files(VERSION / "assets", 1)
    assert [p.data.name for p in parts] == [f"MonolithMultiHashTable_1-{j:05d}-of-00003" for j in range(3)]
    assert [(c.table, c.rows) for c in read_native_metadata(str(parts[0].meta))] == [
        ("fc_empty", 0),
        ("fc_item", 3),
        ("fc_user", 4),
    ]
    assert parts[2].data.stat().st_size == 0  # what TF writes for a part without rows
    tables = read_native_dump(parts)
    assert sorted(tables) == ["fc_empty", "fc_item", "fc_user"]
    assert tables["fc_empty"][1].shape == (0, 0)  # listed with no rows: dim unknown
    for table in ("fc_item", "fc_user"):
        ids, values = tables[table]
        rows = EXPECTED[table]["rows"]
        assert values.shape == (len(rows), EXPECTED[table]["dim"])
        assert sorted(ids.tolist()) == sorted(int(fid) for fid in rows)
        for fid, row in zip(ids.tolist(), values, strict=True):
            assert row.tolist() == np.float32(rows[str(fid)]).tolist()


def test_the_ps_loader_serves_a_native_version(tmp_path: Path) -> None:
    tables = load_version(VERSION, 1)
    assert sorted(tables.tables) == ["fc_empty", "fc_item", "fc_user"]
    assert tables.tables["fc_empty"].dim == 0
    for table in ("fc_item", "fc_user"):
        rows = EXPECTED[table]["rows"]
        fids = np.array([int(f) for f in rows] + [999_999], np.int64)
        got, missing = tables.tables[table].lookup(fids)
        assert missing == 1 and not got[-1].any()
        assert got[:-1].tolist() == [np.float32(rows[f]).tolist() for f in rows]


def test_a_corrupt_or_truncated_snappy_block_fails_naming_the_file(tmp_path: Path) -> None:
    version = _copy_version(tmp_path)
    data = version / "assets" / "MonolithMultiHashTable_1-00000-of-00003"
    original = data.read_bytes()
    data.write_bytes(original[:-7])
    with pytest.raises(TFRecordCorruptError, match="truncated snappy block") as error:
        load_version(version, 1)
    assert error.value.path == str(data) and status_code_for(error.value).name == "INVALID_ARGUMENT"
    for pos in (6, len(original) // 2, len(original) - 3):  # the header, a literal, the tail of the block
        corrupt = bytearray(original)
        corrupt[pos] ^= 0x5A
        data.write_bytes(bytes(corrupt))
        with pytest.raises(InvalidArgumentError, match=re.escape(str(data))):
            load_version(version, 1)
    data.write_bytes(b"\xff\xff\xff\xff" + original[4:])  # a block length past the end of the file
    with pytest.raises(TFRecordCorruptError, match="truncated snappy block"):
        load_version(version, 1)


def test_counts_that_do_not_match_the_rows_fail(tmp_path: Path) -> None:
    version = _copy_version(tmp_path)
    meta = version / "assets" / "MonolithMultiHashTable_1.meta-00001-of-00003"
    write_records(meta, _meta(("fc_empty", 0), ("fc_item", 2), ("fc_user", 4)))  # the data file holds 3
    with pytest.raises(NativeDumpError, match=r"end after 3 of the 4 rows of table 'fc_user'"):
        load_version(version, 1)
    write_records(meta, _meta(("fc_empty", 0), ("fc_item", 2), ("fc_user", 2)))
    with pytest.raises(NativeDumpError, match=r"more records than the 4 its metadata"):
        load_version(version, 1)
    write_records(meta, _meta(("fc_item", 1 << 60)))  # refused before anything is allocated for it
    with pytest.raises(NativeDumpError, match="decompressed bytes can hold"):
        load_version(version, 1)


def test_a_missing_meta_file_or_part_fails(tmp_path: Path) -> None:
    version = _copy_version(tmp_path)
    (version / "assets" / "MonolithMultiHashTable_1.meta-00002-of-00003").unlink()
    with pytest.raises(InvalidArgumentError, match=r"MonolithMultiHashTable_1\.meta-00002-of-00003"):
        load_version(version, 1)
    (version / "assets" / "MonolithMultiHashTable_1-00002-of-00003").unlink()
    with pytest.raises(InvalidArgumentError, match=r"incomplete native multi-hash-table dump .* 2 file\(s\) missing"):
        load_version(version, 1)


def test_a_table_whose_rows_disagree_on_dim_fails(tmp_path: Path) -> None:
    assets = tmp_path / "ps_0" / "1" / "assets"
    assets.mkdir(parents=True)
    _write_snappy_records(assets / "MonolithMultiHashTable_0-00000-of-00001", [_row(2, [1.0, 2.0]), _row(4, [1.0])])
    write_records(assets / "MonolithMultiHashTable_0.meta-00000-of-00001", _meta(("t", 2)))
    with pytest.raises(NativeDumpError, match=r"table 't': row dim 1 differs from the table's dim 2"):
        load_version(assets.parent, 0)
    # Dims may differ between tables, and a table's rows may be split over parts.
    _write_snappy_records(assets / "MonolithMultiHashTable_0-00000-of-00001", [_row(2, [1.0, 2.0]), _row(4, [1.0])])
    write_records(assets / "MonolithMultiHashTable_0.meta-00000-of-00001", _meta(("t", 1), ("u", 1)))
    tables = load_version(assets.parent, 0)
    assert (tables.tables["t"].dim, tables.tables["u"].dim) == (2, 1)


def test_a_version_with_both_kinds_of_dump_is_refused(tmp_path: Path) -> None:
    version = _copy_version(tmp_path)
    write_dump(version / "assets" / format_dump_filename("t", 1, 0, 1), np.array([1], np.int64), np.ones((1, 2)))
    with pytest.raises(InvalidArgumentError, match="holds both per-table dumps of partition 1"):
        load_version(version, 1)
    # Partition 3 finds neither kind of its own, and says what the folder holds.
    with pytest.raises(NotFoundError, match=r"native multi-hash-table dumps of partition\(s\) \[1\] only"):
        load_version(version, 3)
