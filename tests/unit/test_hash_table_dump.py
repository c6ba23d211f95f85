from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monolith_serving.core import hash_table_dump
from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.hash_table_dump import (
    DumpFileName,
    DumpFormatError,
    TableResourceName,
    explain_missing_dumps,
    find_dump_files,
    format_dump_filename,
    parse_dump_filename,
    parse_table_resource_name,
    read_dump,
    write_dump,
)
from monolith_serving.core.tfrecord import TFRecordCorruptError, read_records, write_records
from monolith_serving.proto_gen.monolith.hash_table.entry_dump_pb2 import EntryDump

# ------------------------------------------------------------------------------------ file names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MonolithHashTable_user_emb_0-00000-of-00002", DumpFileName("user_emb", 0, 0, 2)),
        ("MonolithHashTable_a_b_c_12-00003-of-00010", DumpFileName("a_b_c", 12, 3, 10)),
        ("MonolithHashTable_0123456789abcdef0123456789abcdef_4-00000-of-00001",
         DumpFileName("0123456789abcdef0123456789abcdef", 4, 0, 1)),
        ("MonolithHashTable_t_1_2-00001-of-00002", DumpFileName("t_1", 2, 1, 2)),
        ("MonolithHashTable_t-x_3-00000-of-00001", DumpFileName("t-x", 3, 0, 1)),
    ],
)  # fmt: skip
def test_parse_dump_filename(name: str, expected: DumpFileName) -> None:
    assert parse_dump_filename(name) == expected
    assert expected.name == name


@pytest.mark.parametrize(
    "name",
    [
        "ExportSaverListenerState",
        "MonolithHashTable_t-00000-of-00001",  # no partition index
        "MonolithHashTable_t_0-00000-of-00001.tmp",
        "MonolithHashTable__0-00000-of-00001",  # empty table name
        "MonolithHashTable_t_0-0-of-1",  # not zero padded
        "xMonolithHashTable_t_0-00000-of-00001",
        "saved_model.pb",
    ],
)
def test_parse_non_dump_names(name: str) -> None:
    assert parse_dump_filename(name) is None


def test_parse_impossible_shard_raises() -> None:
    with pytest.raises(InvalidArgumentError, match="shard 2 of 2"):
        parse_dump_filename("MonolithHashTable_t_0-00002-of-00002")


def _touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"")


def test_find_dump_files(tmp_path: Path) -> None:
    names = [format_dump_filename(t, k, j, m) for t, m in [("user_emb", 3), ("item_1", 1)] for k in (0, 1)
             for j in range(m)]  # fmt: skip
    _touch(tmp_path, *names, "ExportSaverListenerState", "variables")
    (tmp_path / format_dump_filename("dir_table", 1, 0, 1)).mkdir()  # directories are not dump files
    found = find_dump_files(tmp_path, 1)
    assert list(found) == ["item_1", "user_emb"]
    assert found["user_emb"] == [tmp_path / format_dump_filename("user_emb", 1, j, 3) for j in range(3)]
    assert found["item_1"] == [tmp_path / "MonolithHashTable_item_1_1-00000-of-00001"]
    assert find_dump_files(tmp_path, 7) == {}


def test_find_dump_files_incomplete_set(tmp_path: Path) -> None:
    _touch(tmp_path, format_dump_filename("t", 0, 0, 3), format_dump_filename("t", 0, 2, 3))
    with pytest.raises(InvalidArgumentError) as info:
        find_dump_files(tmp_path, 0)
    assert str(tmp_path) in str(info.value)
    assert format_dump_filename("t", 0, 1, 3) in str(info.value)


def test_find_dump_files_mixed_counts_and_missing_dir(tmp_path: Path) -> None:
    _touch(tmp_path, format_dump_filename("t", 0, 0, 1), format_dump_filename("t", 0, 1, 2))
    with pytest.raises(InvalidArgumentError, match="shard count"):
        find_dump_files(tmp_path, 0)
    with pytest.raises(NotFoundError, match="nope"):
        find_dump_files(tmp_path / "nope", 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("MonolithHashTable_user_emb_0", TableResourceName("user_emb", 0)),
        ("MonolithHashTable_t_1_12", TableResourceName("t_1", 12)),
        ("MonolithHashTable_" + "0123456789abcdef" * 2 + "_4", TableResourceName("0123456789abcdef" * 2, 4)),
        ("MonolithHashTable_scope/t:x_2", TableResourceName("scope-t-x", 2)),  # as Monolith names its dump files
        ("MonolithHashTable_t", None),
        ("MonolithHashTable__0", None),
        ("MonolithMultiHashTable_0", None),
        ("t_0", None),
    ],
)  # fmt: skip
def test_parse_table_resource_name(name: str, expected: TableResourceName | None) -> None:
    """A trainer's table name is its dump files' name without ``-<j>-of-<m>``: both parse to the same table."""
    assert parse_table_resource_name(name) == expected
    if expected is not None and "/" not in name:
        parsed = parse_dump_filename(name + "-00000-of-00001")
        assert parsed is not None and (parsed.table, parsed.partition) == (expected.table, expected.partition)


def test_explain_missing_dumps(tmp_path: Path) -> None:
    message = explain_missing_dumps(tmp_path, 3)
    assert str(tmp_path) in message and "MonolithHashTable_<table>_3-<jjjjj>-of-<mmmmm>" in message
    assert "not supported" not in message and "only" not in message
    _touch(tmp_path, "MonolithMultiHashTable_3-00000-of-00002", "MonolithMultiHashTable_3.meta-00000-of-00001",
           format_dump_filename("t", 1, 0, 1))  # fmt: skip
    (tmp_path / format_dump_filename("t", 3, 0, 1)).mkdir()
    (tmp_path / "MonolithMultiHashTable_3-00000-of-00002").unlink()
    (tmp_path / "MonolithMultiHashTable_3.meta-00000-of-00001").unlink()
    _touch(tmp_path, "MonolithMultiHashTable_2-00000-of-00001", "MonolithMultiHashTable_-00000-of-00001")
    message = explain_missing_dumps(tmp_path, 3)
    assert "MonolithMultiHashTable_3.meta-<jjjjj>-of-<mmmmm>" in message  # the native names expected too
    assert "native multi-hash-table dumps of partition(s) [2] only" in message
    assert "trainer without PS (MonolithMultiHashTable_-00000-of-00001)" in message
    assert "partition(s) [1] only" in message and "1 dump-named entries are not regular files" in message


# ------------------------------------------------------------------------------------ hand-made protobuf wire


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _id_field(value: int) -> bytes:
    return _key(1, 1) + struct.pack("<q", value)


def _unpacked(values: list[float]) -> bytes:
    return b"".join(_key(2, 5) + struct.pack("<f", v) for v in values)


def _packed(values: list[float]) -> bytes:
    body = struct.pack(f"<{len(values)}f", *values)
    return _key(2, 2) + _varint(len(body)) + body


def _bits(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint32]:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


def _protobuf_decode(path: Path) -> tuple[list[int], list[list[float]]]:
    entries = [EntryDump.FromString(r) for r in read_records(path)]
    return [e.id for e in entries], [list(e.num) for e in entries]


# ------------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("ts", [None, 0, 1_700_000_000, "per_row"])
def test_write_dump_is_byte_exact(tmp_path: Path, ts: object) -> None:
    rng = np.random.default_rng(3)
    ids = np.array([0, 1, -1, 2**63 - 1, -(2**63), 123456789], dtype=np.int64)
    values = rng.standard_normal((6, 5)).astype(np.float32)
    values[0, :3] = [np.nan, -0.0, np.inf]
    stamps: object = ts
    if ts == "per_row":
        stamps = np.array([0, 127, 128, -1, 2**40, 5], dtype=np.int64)  # varint widths 1, 1, 2, 10, 6, 1
    path = tmp_path / "d"
    write_dump(path, ids, values, stamps)  # type: ignore[arg-type]
    expected = []
    for i in range(6):
        entry = EntryDump(id=int(ids[i]), num=values[i].tolist())
        if stamps is not None:
            entry.last_update_ts_sec = int(np.broadcast_to(np.asarray(stamps), (6,))[i])
        expected.append(entry.SerializeToString())
    assert read_records(path) == expected


def test_write_dump_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        write_dump(tmp_path / "d", [1, 2], np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(InvalidArgumentError):
        write_dump(tmp_path / "d", [1], np.zeros((1, 0), dtype=np.float32))


# ------------------------------------------------------------------------------------ reading


def test_round_trip_several_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ids = rng.integers(-(2**63), 2**63 - 1, size=3000, dtype=np.int64)
    values = rng.standard_normal((3000, 33)).astype(np.float32)
    paths = [tmp_path / format_dump_filename("t", 0, j, 3) for j in range(3)]
    write_dump(paths[0], ids[:1000], values[:1000], 1_700_000_000)
    write_dump(paths[1], ids[:0], values[:0])  # an empty shard
    write_dump(paths[2], ids[1000:], values[1000:])  # a different record length (no timestamp)
    got_ids, got_values = read_dump(paths, window_size=4096)  # small window: many refills and batches
    assert got_ids.dtype == np.int64 and got_values.dtype == np.float32
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(_bits(got_values), _bits(values))


def test_empty_file_gives_zero_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    ids, values = read_dump([path])
    assert ids.shape == (0,) and values.shape == (0, 0)
    assert read_dump(path, expected_dim=8)[1].shape == (0, 8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    n=st.integers(0, 40),
    dim=st.integers(1, 40),
)
def test_hypothesis_round_trip(tmp_path: Path, data: st.DataObject, n: int, dim: int) -> None:
    ids = np.array(data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), dtype=np.int64)
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
    values = np.array(
        data.draw(st.lists(st.lists(floats, min_size=dim, max_size=dim), min_size=n, max_size=n)),
        dtype=np.float32,
    ).reshape(n, dim)
    ts = data.draw(st.none() | st.integers(-(2**63), 2**63 - 1))
    path = tmp_path / "h"
    write_dump(path, ids, values, ts)
    got_ids, got_values = read_dump([path], expected_dim=dim)
    np.testing.assert_array_equal(got_ids, ids)
    assert got_values.shape == (n, dim)
    np.testing.assert_array_equal(_bits(got_values), _bits(values))


def _mixed_layout_records() -> list[bytes]:
    """EntryDump payloads in many encodings protobuf accepts, incl. ones the fast path must hand over."""
    opt_body = _key(1, 0) + _varint(300) + _key(2, 5) + b"\x00\x00\x80\x3f"
    opt = _key(3, 2) + _varint(len(opt_body)) + opt_body
    ts = _key(4, 0) + _varint(1_700_000_000)
    unknown = _key(9, 2) + _varint(3) + b"abc"
    group = _key(11, 3) + _key(1, 0) + _varint(5) + _key(11, 4)  # fast path cannot skip groups
    vals = [[float(i + 10 * r) for i in range(4)] for r in range(12)]
    records = [
        _id_field(1) + _unpacked(vals[0]),
        _id_field(2) + _unpacked(vals[1]) + ts,
        _id_field(-3) + _packed(vals[2]),
        _unpacked(vals[3]) + _id_field(4),  # fields out of order
        _id_field(5) + _unpacked(vals[4][:2]) + opt + _unpacked(vals[4][2:]) + ts,
        _id_field(999) + _unpacked(vals[5]) + _id_field(6),  # last id wins
        _unpacked(vals[6]),  # no id: proto2 default 0
        _id_field(7) + _packed(vals[7][:1]) + _unpacked(vals[7][1:3]) + _packed(vals[7][3:]),
        _id_field(8) + unknown + _unpacked(vals[8]),
        _id_field(9) + group + _unpacked(vals[9]),
        _id_field(10) + _key(20, 5) + b"\x01\x02\x03\x04" + _unpacked(vals[10]) + _key(4, 0) + _varint(-1),
        _id_field(11) + _unpacked(vals[11]),
    ]
    # Runs of identical layout too, so batches of more than one record are exercised between the odd ones.
    return [r for r in records for _ in range(3)]


@pytest.fixture
def protobuf_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts records the reader hands to the protobuf fallback (by byte offset)."""
    calls: list[int] = []
    real = hash_table_dump._parse_with_protobuf

    def counting(data: bytes, path: str, offset: int) -> tuple[int, list[float]]:
        calls.append(offset)
        return real(data, path, offset)

    monkeypatch.setattr(hash_table_dump, "_parse_with_protobuf", counting)
    return calls


@pytest.mark.parametrize("window_size", [64, 1 << 20])
def test_fast_path_equals_protobuf(tmp_path: Path, window_size: int, protobuf_calls: list[int]) -> None:
    path = tmp_path / "mixed"
    records = _mixed_layout_records()
    write_records(path, records)
    ref_ids, ref_nums = _protobuf_decode(path)
    ids, values = read_dump([path], window_size=window_size)
    assert ids.tolist() == ref_ids
    np.testing.assert_array_equal(values, np.array(ref_nums, dtype=np.float32))
    assert len(protobuf_calls) == 3  # only the three records with a group field


def test_equal_length_records_with_different_layouts(tmp_path: Path, protobuf_calls: list[int]) -> None:
    v = [1.5, -2.0, 3.25, 4.0]
    last = _unpacked(v[3:])
    layouts = [  # each adds 6 bytes of other fields, so all records are 35 bytes long
        lambda i: _id_field(i) + _unpacked(v) + _key(5, 0) + _varint(1 << 28),
        lambda i: _unpacked(v) + _id_field(i) + _key(4, 0) + _varint(1 << 28),
        lambda i: _id_field(i) + _packed(v) + _key(5, 0) + _varint(1) + _key(6, 0) + _varint(1 << 28),
        lambda i: _id_field(i) + _unpacked(v[:3]) + _key(4, 0) + _varint(1 << 14) + _key(6, 0) + _varint(1) + last,
        lambda i: _id_field(i) + _unpacked(v[:3]) + _key(4, 0) + _varint(1 << 7) + _key(6, 0) + _varint(1 << 7)
        + last,
    ]  # fmt: skip
    records = [layouts[(i * 7 // 3) % len(layouts)](i) for i in range(200)]
    assert len({len(r) for r in records}) == 1  # same length: only the byte checks can tell them apart
    path = tmp_path / "same_len"
    write_records(path, records)
    ref_ids, ref_nums = _protobuf_decode(path)
    ids, values = read_dump([path])
    assert ids.tolist() == ref_ids == list(range(200))
    np.testing.assert_array_equal(values, np.array(ref_nums, dtype=np.float32))
    assert protobuf_calls == []


def test_fast_path_equals_protobuf_on_written_dump(tmp_path: Path, protobuf_calls: list[int]) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "d"
    write_dump(path, rng.integers(0, 1 << 40, 500), rng.standard_normal((500, 17)), rng.integers(0, 1 << 30, 500))
    ref_ids, ref_nums = _protobuf_decode(path)
    ids, values = read_dump(path)
    assert protobuf_calls == []
    assert ids.tolist() == ref_ids
    np.testing.assert_array_equal(values, np.array(ref_nums, dtype=np.float32))


def _uniform_dump(tmp_path: Path, n: int = 400, dim: int = 8) -> tuple[Path, int]:
    path = tmp_path / format_dump_filename("t", 0, 0, 1)
    rng = np.random.default_rng(6)
    write_dump(path, np.arange(n), rng.standard_normal((n, dim)), 1_700_000_000)
    record_size = 16 + 9 + 5 * dim + 6
    assert path.stat().st_size == n * record_size
    return path, record_size


@pytest.mark.parametrize(("in_record", "reason"), [(30, "data CRC"), (9, "length CRC"), (0, "length CRC"),
                                                   (25, "data CRC")])  # fmt: skip
def test_corrupt_byte_in_batch_names_file_and_offset(tmp_path: Path, in_record: int, reason: str) -> None:
    path, record_size = _uniform_dump(tmp_path)
    bad = 237  # deep inside a batch, not the record a batch starts with
    raw = bytearray(path.read_bytes())
    raw[bad * record_size + in_record] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordCorruptError) as info:
        read_dump([path])
    assert info.value.offset == bad * record_size
    assert str(path) in str(info.value) and reason in str(info.value)


def test_corrupt_first_record(tmp_path: Path) -> None:
    path, _ = _uniform_dump(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0x80
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordCorruptError) as info:
        read_dump([path])
    assert info.value.offset == 0


def test_truncated_dump_names_offset(tmp_path: Path) -> None:
    path, record_size = _uniform_dump(tmp_path)
    path.write_bytes(path.read_bytes()[: 300 * record_size + 20])
    with pytest.raises(TFRecordCorruptError, match="truncated") as info:
        read_dump([path])
    assert info.value.offset == 300 * record_size


def test_record_without_num_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nonum"
    write_records(path, [_id_field(1) + _unpacked([1.0]), _id_field(2)])
    with pytest.raises(DumpFormatError, match="no `num`") as info:
        read_dump([path])
    assert str(path) in str(info.value)


def test_inconsistent_dims_name_file_and_offset(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_dump(first, [1, 2], np.ones((2, 4)))
    write_records(second, [_id_field(3) + _unpacked([1.0] * 4), _id_field(4) + _unpacked([1.0] * 5)])
    with pytest.raises(DumpFormatError) as info:
        read_dump([first, second])
    assert str(second) in str(info.value)
    assert info.value.offset == 16 + 9 + 5 * 4
    with pytest.raises(DumpFormatError, match="expected dim 3"):
        read_dump([first], expected_dim=3)


def test_unparseable_payload_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    write_records(path, [_id_field(1) + _unpacked([1.0]), b"\x0a\xff"])  # length-delimited id, truncated
    with pytest.raises(DumpFormatError) as info:
        read_dump([path])
    assert info.value.offset == 16 + 9 + 5


@pytest.mark.parametrize("rows", [1, 37, 1000])
def test_read_dump_rows_start_on_a_cache_line(tmp_path: Path, rows: int) -> None:
    # The PS gathers random rows from this matrix: a row straddling an extra cache line costs ~25 % of the
    # gather's speed, so the reader must hand out a 64-byte aligned matrix (also when it trims spare capacity).
    rng = np.random.default_rng(rows)
    fids = rng.permutation(np.arange(rows, dtype=np.int64) * 7 + 1)
    values = rng.standard_normal((rows, 32), dtype=np.float32)
    paths = []
    for j, part in enumerate(np.array_split(np.arange(rows), 2)):
        path = tmp_path / format_dump_filename("t", 0, j, 2)
        write_dump(path, fids[part], values[part])
        paths.append(path)
    got_fids, got_values = read_dump(paths)
    assert got_values.ctypes.data % 64 == 0
    np.testing.assert_array_equal(got_fids, fids)
    np.testing.assert_array_equal(got_values, values)
