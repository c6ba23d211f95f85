"""Writes the native multi-hash-table dump fixtures of this folder with TensorFlow's own record writer.

Not run by the test suite (TensorFlow is not a dependency). Run it from a scratch virtualenv:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfvenv/bin/python tests/unit/data/native_multi_hash_table/make_fixtures.py

The data files are written exactly as Monolith's ``SaveOneShard`` does (a TFRecord writer with SNAPPY
compression; its Python wrapper refuses "SNAPPY", so the pybind writer is called directly), the metadata files
with an uncompressed writer. EntryDump and MultiHashTableMetadata records are encoded by hand below, field by
field, in protobuf's own serialization (the tests parse them back with the generated classes).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
from tensorflow.python.lib.io import _pywrap_record_io as record_io

HERE = Path(__file__).resolve().parent
TS_SEC = 1_700_000_000


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def entry_dump(fid: int, values: np.ndarray) -> bytes:
    """EntryDump{id = 1 (sfixed64), num = 2 (repeated float, unpacked), last_update_ts_sec = 4 (int64)}."""
    out = bytearray(b"\x09" + struct.pack("<q", fid))
    for value in np.asarray(values, "<f4"):
        out += b"\x15" + struct.pack("<f", float(value))
    out += b"\x20" + _varint(TS_SEC)
    return bytes(out)


def metadata(table: str, num_entries: int) -> bytes:
    """MultiHashTableMetadata{table_name = 1 (string), num_entries = 2 (uint64)}."""
    name = table.encode()
    return b"\x0a" + _varint(len(name)) + name + b"\x10" + _varint(num_entries)


def write_part(assets: Path, partition: int, part: int, parts: int, tables: list[tuple[str, list[bytes]]]) -> None:
    """One ``-<part>-of-<parts>`` pair: every table's rows in the data file, one metadata record per table."""
    suffix = f"-{part:05d}-of-{parts:05d}"
    data = record_io.RecordWriter(
        str(assets / f"MonolithMultiHashTable_{partition}{suffix}").encode(), record_io.RecordWriterOptions("SNAPPY")
    )
    meta = record_io.RecordWriter(
        str(assets / f"MonolithMultiHashTable_{partition}.meta{suffix}").encode(), record_io.RecordWriterOptions("")
    )
    for table, records in tables:
        for record in records:
            data.write(record)
        meta.write(metadata(table, len(records)))
    data.close()
    meta.close()


def small_version() -> None:
    """ps_1 of a 2-PS model: tables fc_empty (no rows anywhere), fc_item (dim 3), fc_user (dim 4), in sorted
    order as Monolith writes them, over three parts; part 2 holds no rows at all. Fids are odd (fid mod 2 == 1)."""
    root = HERE / "ps_1"
    shutil.rmtree(root, ignore_errors=True)
    assets = root / "1700000000" / "assets"
    assets.mkdir(parents=True)
    rng = np.random.default_rng(7)
    dims = {"fc_empty": 2, "fc_item": 3, "fc_user": 4}
    fids = {
        "fc_empty": [[], [], []],
        "fc_item": [[(1 << 48) | 1, (1 << 48) | 3, (1 << 48) | 5], [(1 << 48) | 7, (1 << 48) | 9], []],
        "fc_user": [[(2 << 48) | 11, (2 << 48) | 13, -1, (2 << 48) | 15], [(2 << 48) | 17, (2 << 48) | 19, 21], []],
    }
    expected: dict[str, dict[str, object]] = {}
    parts: list[list[tuple[str, list[bytes]]]] = [[], [], []]
    for table in sorted(dims):
        rows: dict[str, list[float]] = {}
        for part, part_fids in enumerate(fids[table]):
            records = []
            for fid in part_fids:
                values = rng.standard_normal(dims[table]).astype(np.float32)
                rows[str(fid)] = [float(v) for v in values]
                records.append(entry_dump(fid, values))
            parts[part].append((table, records))
        expected[table] = {"dim": dims[table], "rows": rows}
    for part, tables in enumerate(parts):
        write_part(assets, 1, part, len(parts), tables)
    (root / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


def multi_block() -> None:
    """One part whose snappy stream spans several compressed blocks (TF's default 256 KiB input buffer): a
    dim-30000 table between two small ones, so records cross block boundaries."""
    root = HERE / "multi_block"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    pattern = (np.arange(30000) % 4).astype(np.float32) * 0.25
    tables = [
        ("a_small", [entry_dump(2 * k, np.array([k, -k], np.float32)) for k in range(3)]),
        ("b_wide", [entry_dump(2 * k + 100, pattern + k) for k in range(3)]),
        ("c_small", [entry_dump(2 * k + 200, np.array([k, k + 0.5], np.float32)) for k in range(3)]),
    ]
    write_part(root, 0, 0, 1, tables)


if __name__ == "__main__":
    small_version()
    multi_block()
