"""Monolith hash-table dump codec: file naming, discovery, a fast reader and a byte-exact writer.

A dump file is a TFRecord file whose records are serialized ``monolith.hash_table.EntryDump`` messages
(``sfixed64 id = 1; repeated float num = 2 (unpacked); OptimizerDump opt = 3; int64 last_update_ts_sec = 4``).

Reading speed matters (a PS loads millions of rows at start-up), so records are decoded in batches with numpy:
the wire layout of one record (where its tags, id and floats sit) is learned with a small Python scanner,
then every following record of the same length is checked against that layout and decoded through strided
numpy views over the read buffer. A record that breaks the layout starts a new batch; a record the scanner
cannot describe (groups, wrong wire type for id/num, malformed data) is parsed by the generated protobuf
class instead, so both paths give protobuf's answer.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.proto_read import WireFormatError, read_varint
from monolith_serving.core.tfrecord import (
    FRAME_OVERHEAD,
    HEADER_SIZE,
    PathLike,
    RecordWindow,
    TFRecordCorruptError,
    TFRecordWriter,
    frame_uniform_records,
    masked_crc32c,
    masked_crcs_of_rows,
)
from monolith_serving.proto_gen.monolith.hash_table import entry_dump_pb2

DUMP_PREFIX = "MonolithHashTable_"
# Monolith's native multi-hash-table dumps (``use_native_multi_hash_table``): per PS partition ``<k>`` a data file
# ``MonolithMultiHashTable_<k>-<j>-of-<m>`` (snappy-compressed TFRecords of every table's EntryDump rows) and a
# metadata file ``MonolithMultiHashTable_<k>.meta-<j>-of-<m>``; decoded by core/native_multi_dump.py. A trainer
# without PS names its table ``MonolithMultiHashTable_`` (empty partition): no ps_<i> sub-model holds those.
NATIVE_MULTI_DUMP_PREFIX = "MonolithMultiHashTable_"
_NATIVE_NAME = re.compile(
    r"^MonolithMultiHashTable_(?P<partition>\d*)(?P<meta>\.meta)?-(?P<shard>\d{5,})-of-(?P<num>\d{5,})$"
)
# Greedy table group + end anchor: table names may contain underscores, the last `_<k>` is the partition.
_DUMP_NAME = re.compile(r"^MonolithHashTable_(?P<table>.+)_(?P<partition>\d+)-(?P<shard>\d{5,})-of-(?P<num>\d{5,})$")
_RESOURCE_NAME = re.compile(r"^MonolithHashTable_(?P<table>.+)_(?P<partition>\d+)$")

_ID_TAG = 0x09  # field 1, wire type 1 (fixed64)
_NUM_TAG = 0x15  # field 2, wire type 5 (fixed32), one tag per float because `num` is not packed
_TS_TAG = 0x20  # field 4, wire type 0 (varint)

# Read buffer per dump file. Its bytes, and the batch decoded from it, are resident on top of two table versions
# while a new version loads; 2 MiB reads as fast as 8 MiB (0.35 s per 1M dim-32 rows either way).
DUMP_WINDOW = 2 << 20
_MIN_BATCH = 64  # first batch after a layout change; doubles while records keep matching
_WRITE_CHUNK = 1 << 16  # rows framed at once by write_dump (bounds its temporary memory)


class DumpFormatError(InvalidArgumentError):
    """A dump file's records are not usable EntryDump rows (bad payload, no `num`, inconsistent dim)."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"bad hash-table dump {path!r} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class DumpFileName:
    table: str
    partition: int
    shard: int
    num_shards: int

    @property
    def name(self) -> str:
        return format_dump_filename(self.table, self.partition, self.shard, self.num_shards)


def format_dump_filename(table: str, partition: int, shard: int, num_shards: int) -> str:
    return f"{DUMP_PREFIX}{table}_{partition}-{shard:05d}-of-{num_shards:05d}"


def parse_dump_filename(name: str) -> DumpFileName | None:
    """Parse ``MonolithHashTable_<table>_<k>-<jjjjj>-of-<mmmmm>``; None if ``name`` is not a dump file name.

    Raises InvalidArgumentError for a dump-shaped name whose shard numbers are impossible (j >= m), because
    silently skipping such a file could drop rows.
    """
    match = _DUMP_NAME.match(name)
    if match is None:
        return None
    shard, num = int(match["shard"]), int(match["num"])
    if num < 1 or shard >= num:
        raise InvalidArgumentError(f"hash-table dump file name {name!r} has shard {shard} of {num}")
    return DumpFileName(match["table"], int(match["partition"]), shard, num)


@dataclass(frozen=True)
class TableResourceName:
    """A Monolith trainer's name of one table partition, ``MonolithHashTable_<table>_<k>``: the hash table's
    ``shared_name``, which its dump files are named after (plus ``-<j>-of-<m>``) and which ``hashtable_assign``
    pushes prefix their inputs with (``<name>_id``, ``<name>_value``)."""

    table: str
    partition: int


def parse_table_resource_name(name: str) -> TableResourceName | None:
    """``MonolithHashTable_<table>_<k>`` -> (table as its dump files name it, k); None for any other name.

    The table part is read as in a dump file name (greedy: the last ``_<digits>`` is the partition), with ``:`` and
    ``/`` turned into ``-`` as Monolith does when it names the files after the table.
    """
    match = _RESOURCE_NAME.match(name)
    if match is None:
        return None
    return TableResourceName(match["table"].replace(":", "-").replace("/", "-"), int(match["partition"]))


def find_dump_files(assets_dir: PathLike, partition: int) -> dict[str, list[Path]]:
    """All dump files of ``partition`` in ``assets_dir``, per table, sorted by shard index.

    Raises NotFoundError if the directory is missing and InvalidArgumentError if a table's ``-of-`` set is
    incomplete or mixes shard counts. Tables without files for this partition are simply absent.
    """
    directory = Path(assets_dir)
    if not directory.is_dir():
        raise NotFoundError(f"hash-table dump directory {str(directory)!r} does not exist")
    shards: dict[str, dict[int, tuple[int, Path]]] = {}
    for entry in directory.iterdir():
        parsed = parse_dump_filename(entry.name)
        if parsed is None or parsed.partition != partition or not entry.is_file():
            continue
        table_shards = shards.setdefault(parsed.table, {})
        table_shards[parsed.shard] = (parsed.num_shards, entry)
    result: dict[str, list[Path]] = {}
    for table in sorted(shards):
        by_shard = shards[table]
        counts = {num for num, _ in by_shard.values()}
        if len(counts) != 1:
            raise InvalidArgumentError(
                f"dump files of table {table!r} partition {partition} in {str(directory)!r} "
                f"disagree on the shard count: {sorted(counts)}"
            )
        (num_shards,) = counts
        missing = sorted(set(range(num_shards)) - set(by_shard))
        if missing:
            names = ", ".join(format_dump_filename(table, partition, j, num_shards) for j in missing[:5])
            raise InvalidArgumentError(
                f"incomplete hash-table dump in {str(directory)!r}: table {table!r} partition {partition} "
                f"is missing {len(missing)} of {num_shards} shard files ({names})"
            )
        result[table] = [by_shard[j][1] for j in range(num_shards)]
    return result


@dataclass(frozen=True)
class NativeDumpPart:
    """One ``-<j>-of-<m>`` part of a native multi-hash-table dump: its data file and its metadata file."""

    data: Path
    meta: Path


def find_native_dump_files(assets_dir: PathLike, partition: int) -> list[NativeDumpPart]:
    """The native multi-hash-table dump parts of ``partition`` in ``assets_dir``, by part index; [] if none.

    Only regular files count. Raises InvalidArgumentError, naming the folder and files, when the set is broken:
    a part without its metadata file (or the reverse), a missing part, parts disagreeing on ``m``, or ``j >= m``.
    """
    directory = Path(assets_dir)
    found: dict[tuple[bool, int], tuple[int, Path]] = {}
    for entry in directory.iterdir():
        match = _NATIVE_NAME.match(entry.name)
        if match is None or match["partition"] != str(partition) or not entry.is_file():
            continue
        shard, num = int(match["shard"]), int(match["num"])
        if num < 1 or shard >= num:
            raise InvalidArgumentError(
                f"native multi-hash-table dump file name {entry.name!r} has part {shard} of {num}"
            )
        found[(match["meta"] is not None, shard)] = (num, entry)
    if not found:
        return []
    where = f"native multi-hash-table dump of partition {partition} in {str(directory)!r}"
    counts = {num for num, _ in found.values()}
    if len(counts) != 1:
        raise InvalidArgumentError(f"{where}: its files disagree on the part count: {sorted(counts)}")
    (num_parts,) = counts
    base = f"{NATIVE_MULTI_DUMP_PREFIX}{partition}"
    missing = [
        f"{base}{'.meta' if meta else ''}-{j:05d}-of-{num_parts:05d}"
        for j in range(num_parts)
        for meta in (False, True)
        if (meta, j) not in found
    ]
    if missing:
        raise InvalidArgumentError(
            f"incomplete {where}: {len(missing)} file(s) missing ({', '.join(missing[:5])}); every part needs its "
            "data file and its .meta file"
        )
    return [NativeDumpPart(found[(False, j)][1], found[(True, j)][1]) for j in range(num_parts)]


def explain_missing_dumps(assets_dir: PathLike, partition: int) -> str:
    """Why ``find_dump_files(assets_dir, partition)`` found nothing, for a load error: the folder, the names
    expected, and what the folder holds instead (native multi-hash-table dumps, other partitions' dumps,
    dump-named entries that are not regular files)."""
    directory = Path(assets_dir)
    expected = format_dump_filename("<table>", partition, 0, 1).replace("00000-of-00001", "<jjjjj>-of-<mmmmm>")
    message = (
        f"no hash-table dump of partition {partition} in {str(directory)!r}: expected at least one file named "
        f"{expected} (an empty file is fine)"
    )
    native_partitions: set[int] = set()
    native_without_ps: list[str] = []
    other_partitions: set[int] = set()
    not_files: list[str] = []
    for entry in sorted(directory.iterdir()):
        native = _NATIVE_NAME.match(entry.name)
        if native is not None:
            if not native["partition"]:
                native_without_ps.append(entry.name)
            elif int(native["partition"]) != partition:
                native_partitions.add(int(native["partition"]))
            continue
        match = _DUMP_NAME.match(entry.name)
        if match is None:
            continue
        if int(match["partition"]) != partition:
            other_partitions.add(int(match["partition"]))
        elif not entry.is_file():
            not_files.append(entry.name)
    message += (
        f" or a native multi-hash-table dump {NATIVE_MULTI_DUMP_PREFIX}{partition}-<jjjjj>-of-<mmmmm> with its "
        f"{NATIVE_MULTI_DUMP_PREFIX}{partition}.meta-<jjjjj>-of-<mmmmm>"
    )
    if native_partitions:
        message += f"; it holds native multi-hash-table dumps of partition(s) {sorted(native_partitions)} only"
    if native_without_ps:
        message += (
            f"; it holds the native multi-hash-table dump of a trainer without PS ({native_without_ps[0]}), "
            "which belongs in no ps_<i> sub-model"
        )
    if other_partitions:
        message += f"; it holds dump files of partition(s) {sorted(other_partitions)} only"
    if not_files:
        message += f"; {len(not_files)} dump-named entries are not regular files and were skipped ({not_files[0]!r})"
    return message


# ---------------------------------------------------------------------------------------------- writing


def _varint_lengths(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    lengths = np.ones(values.shape, dtype=np.int64)
    for groups in range(1, 10):
        lengths += values >= np.uint64(1 << (7 * groups))
    return lengths


def _encode_varints(values: npt.NDArray[np.uint64], width: int) -> npt.NDArray[np.uint8]:
    """Varints of values that all take exactly ``width`` bytes -> ``(n, width)`` bytes."""
    out = np.empty((values.shape[0], width), dtype=np.uint8)
    for i in range(width):
        byte = (values >> np.uint64(7 * i)) & np.uint64(0x7F)
        if i < width - 1:
            byte |= np.uint64(0x80)
        out[:, i] = byte.astype(np.uint8)
    return out


def _entry_payloads(
    ids: npt.NDArray[np.int64], values: npt.NDArray[np.float32], ts: npt.NDArray[np.uint64] | None, ts_width: int
) -> npt.NDArray[np.uint8]:
    """Serialized EntryDump messages (same byte layout as protobuf's) for rows whose ts varints share a width."""
    n, dim = values.shape
    floats_end = 9 + 5 * dim
    length = floats_end + (1 + ts_width if ts is not None else 0)
    out = np.empty((n, length), dtype=np.uint8)
    out[:, 0] = _ID_TAG
    out[:, 1:9] = ids.astype("<i8").view(np.uint8).reshape(n, 8)
    floats = out[:, 9:floats_end].reshape(n, dim, 5)
    floats[:, :, 0] = _NUM_TAG
    floats[:, :, 1:] = np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(n, dim, 4)
    if ts is not None:
        out[:, floats_end] = _TS_TAG
        out[:, floats_end + 1 :] = _encode_varints(ts, ts_width)
    return out


def write_dump(
    path: PathLike,
    ids: npt.ArrayLike,
    values: npt.ArrayLike,
    last_update_ts_sec: int | npt.ArrayLike | None = None,
) -> None:
    """Write a dump file of ``len(ids)`` EntryDump records, byte-identical to protobuf's serialization.

    ``values`` is ``(n, dim)`` with ``dim >= 1``; ``last_update_ts_sec`` is None (field absent), one int for
    every row, or one int per row. The file is written atomically (temp file + rename).
    """
    id_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    val_arr = np.asarray(values, dtype=np.float32)
    if val_arr.ndim != 2 or val_arr.shape[0] != id_arr.shape[0]:
        raise InvalidArgumentError(f"values must be (n={id_arr.shape[0]}, dim), got shape {val_arr.shape}")
    if val_arr.shape[1] < 1:
        raise InvalidArgumentError("dump rows need at least one value (dim >= 1)")
    n = id_arr.shape[0]
    ts_arr: npt.NDArray[np.uint64] | None = None
    if last_update_ts_sec is not None:
        # int64 varints of negative numbers are their two's complement as uint64 (10 bytes), as in protobuf.
        ts_arr = np.broadcast_to(np.asarray(last_update_ts_sec, dtype=np.int64), (n,)).view(np.uint64)
    widths = _varint_lengths(ts_arr) if ts_arr is not None else np.zeros(n, dtype=np.int64)
    # Rows are framed in runs of equal record length so each run is one vectorised block, in file order.
    breaks = np.flatnonzero(np.diff(widths)) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    ends = np.concatenate((breaks, [n])).tolist()
    with TFRecordWriter(path) as writer:
        for run_start, run_end in zip(starts, ends, strict=True):
            if run_start >= run_end:
                continue
            width = int(widths[run_start])
            for lo in range(run_start, run_end, _WRITE_CHUNK):
                hi = min(lo + _WRITE_CHUNK, run_end)
                chunk_ts = ts_arr[lo:hi] if ts_arr is not None else None
                payload = _entry_payloads(id_arr[lo:hi], val_arr[lo:hi], chunk_ts, width)
                writer.write_framed(frame_uniform_records(payload))


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Run:
    """``count`` positions ``start, start+stride, ...`` inside a record's data."""

    start: int
    count: int
    stride: int


@dataclass(frozen=True)
class _ByteCheck:
    run: _Run
    mask: int  # 0xFF: byte must equal; 0x80: only the varint continuation bit must equal
    expected: npt.NDArray[np.uint8]


@dataclass(frozen=True)
class _Layout:
    """Where a record's id and floats sit, and which bytes every record of the same layout must share."""

    length: int
    id_pos: int | None
    float_runs: tuple[_Run, ...]
    checks: tuple[_ByteCheck, ...]

    @property
    def dim(self) -> int:
        return sum(run.count for run in self.float_runs)


def _arith_runs(positions: list[int]) -> list[_Run]:
    runs: list[_Run] = []
    i = 0
    while i < len(positions):
        if i + 1 == len(positions):
            runs.append(_Run(positions[i], 1, 1))
            break
        step = positions[i + 1] - positions[i]
        j = i + 1
        while j + 1 < len(positions) and positions[j + 1] - positions[j] == step:
            j += 1
        runs.append(_Run(positions[i], j - i + 1, step))
        i = j + 1
    return runs


def _scan_layout(data: memoryview) -> _Layout | None:
    """Describe the record's wire layout, or None if it needs the protobuf parser."""
    try:
        return _scan_wire(data)
    except WireFormatError:
        return None  # a truncated or over-long varint: the protobuf parser names the fault


def _scan_wire(data: memoryview) -> _Layout | None:
    """``_scan_layout``, raising WireFormatError on a truncated or over-long varint."""
    size = len(data)
    fixed: list[int] = []  # tag bytes and length prefixes: identical in every record of the layout
    varint_bytes: list[int] = []  # varint value bytes: only their continuation bits are structural
    floats: list[int] = []
    id_pos: int | None = None
    pos = 0
    while pos < size:
        tag, tag_end = read_varint(data, pos)
        fixed.extend(range(pos, tag_end))
        field, wire_type = tag >> 3, tag & 7
        pos = tag_end
        if field == 0:
            return None
        if wire_type == 0:
            if field in (1, 2):
                return None
            _, end = read_varint(data, pos)
            varint_bytes.extend(range(pos, end))
            pos = end
        elif wire_type == 1:
            if field == 2 or pos + 8 > size:
                return None
            if field == 1:
                id_pos = pos  # proto semantics: the last occurrence wins
            pos += 8
        elif wire_type == 5:
            if field == 1 or pos + 4 > size:
                return None
            if field == 2:
                floats.append(pos)
            pos += 4
        elif wire_type == 2:
            length, end = read_varint(data, pos)
            fixed.extend(range(pos, end))
            pos = end
            if field == 1 or pos + length > size or (field == 2 and length % 4):
                return None
            if field == 2:
                floats.extend(range(pos, pos + length, 4))  # packed encoding of `num`
            pos += length  # opt (3) and unknown fields: skipped, serving ignores them
        else:
            return None  # groups: rare enough to leave to protobuf
    arr = np.frombuffer(data, dtype=np.uint8)
    checks = [_ByteCheck(run, 0xFF, _run_bytes(arr, run)) for run in _arith_runs(fixed)]
    checks += [
        _ByteCheck(run, 0x80, np.bitwise_and(_run_bytes(arr, run), np.uint8(0x80))) for run in _arith_runs(varint_bytes)
    ]
    return _Layout(size, id_pos, tuple(_arith_runs(floats)), tuple(checks))


def _run_bytes(arr: npt.NDArray[np.uint8], run: _Run) -> npt.NDArray[np.uint8]:
    return arr[run.start : run.start + run.stride * (run.count - 1) + 1 : run.stride].copy()


_ROW_ALIGN = 64  # cache-line size


def _aligned_matrix(rows: int, dim: int) -> npt.NDArray[np.float32]:
    """An uninitialised float32 [rows, dim] matrix starting on a cache line. numpy's large buffers start 16
    bytes past one, so a 128-byte row straddles 3 lines instead of 2; aligned, a random-row gather of
    dim-32 rows runs ~35 % faster (30 -> 40 M rows/s measured). Costs at most 60 spare bytes."""
    size = rows * dim * 4
    raw = np.empty(size + _ROW_ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ROW_ALIGN
    return raw[start : start + size].view(np.float32).reshape(rows, dim)


class _Rows:
    """Growable output arrays, pre-sized from the bytes left to read so a uniform load never reallocates."""

    def __init__(self) -> None:
        self.n = 0
        self.dim: int | None = None
        self.ids = np.empty(0, dtype=np.int64)
        self.values = np.empty((0, 0), dtype=np.float32)

    def set_dim(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.ids = np.empty(capacity, dtype=np.int64)
        self.values = _aligned_matrix(capacity, dim)

    def reserve(self, extra: int) -> None:
        need = self.n + extra
        if need <= self.ids.shape[0]:
            return
        capacity = max(need, 2 * self.ids.shape[0])
        ids = np.empty(capacity, dtype=np.int64)
        values = _aligned_matrix(capacity, self.values.shape[1])
        ids[: self.n] = self.ids[: self.n]
        values[: self.n] = self.values[: self.n]
        self.ids, self.values = ids, values

    def result(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        if self.n == self.ids.shape[0]:
            return self.ids, self.values
        values = _aligned_matrix(self.n, self.values.shape[1])
        values[:] = self.values[: self.n]
        return self.ids[: self.n].copy(), values


class DumpReader:
    """Decodes the rows of one table. ``read()`` reads whole plain dump files; ``read_records(window, limit)`` reads
    a given number of records from any record window (a table's share of a native multi-hash-table file).
    ``expected_rows``, when known, sizes the output exactly (else it is estimated from the bytes left)."""

    def __init__(
        self,
        paths: list[Path],
        verify_crc: bool,
        expected_dim: int | None,
        window_size: int,
        expected_rows: int | None = None,
    ) -> None:
        self.paths = paths
        self.verify_crc = verify_crc
        self.rows = _Rows()
        self.expected_dim = expected_dim
        self.window_size = window_size
        self.expected_rows = expected_rows
        self.bytes_left = sum(p.stat().st_size for p in paths)

    def _check_dim(self, dim: int, path: str, offset: int, record_size: int) -> None:
        if dim == 0:
            raise DumpFormatError(path, offset, "EntryDump record has no `num` values")
        if self.rows.dim is None:
            if self.expected_dim is not None and dim != self.expected_dim:
                raise DumpFormatError(path, offset, f"row dim {dim} != expected dim {self.expected_dim}")
            estimate = self.bytes_left // record_size if self.expected_rows is None else self.expected_rows
            self.rows.set_dim(dim, max(estimate, 1))
        elif dim != self.rows.dim:
            raise DumpFormatError(path, offset, f"row dim {dim} differs from the table's dim {self.rows.dim}")

    def read(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        for path in self.paths:
            size = path.stat().st_size
            with open(path, "rb") as f:
                self.read_records(RecordWindow(f, str(path), self.window_size))
            self.bytes_left -= size
        return self.rows.result()

    def read_records(self, window: RecordWindow, limit: int | None = None) -> int:
        """Decode records from ``window`` until it ends or ``limit`` records are read; returns how many were."""
        batch = _MIN_BATCH
        path = window.path
        done = 0
        while (limit is None or done < limit) and not window.at_end():
            length = window.read_header(self.verify_crc)
            framed = window.require_record(length)
            offset = window.offset
            data = framed[HEADER_SIZE : HEADER_SIZE + length]
            if self.verify_crc:
                (stored,) = struct.unpack_from("<I", framed, HEADER_SIZE + length)
                if masked_crc32c(data) != stored:
                    raise TFRecordCorruptError(path, offset, "data CRC mismatch")
            record_size = length + FRAME_OVERHEAD
            layout = _scan_layout(data)
            if layout is None:
                entry_id, nums = _parse_with_protobuf(bytes(data), path, offset)
                del data, framed
                self._check_dim(len(nums), path, offset, record_size)
                self.rows.reserve(1)
                self.rows.ids[self.rows.n] = entry_id
                self.rows.values[self.rows.n] = nums
                self.rows.n += 1
                window.consume(record_size)
                done += 1
                batch = _MIN_BATCH
                continue
            del data, framed
            self._check_dim(layout.dim, path, offset, record_size)
            avail = window.ensure(min(record_size * batch, max(window.capacity, record_size)))
            count = min(avail // record_size, batch)
            if limit is not None:
                count = min(count, limit - done)
            matched = self._decode_batch(window.view(), count, layout, path, window.offset)
            window.consume(matched * record_size)
            done += matched
            batch = min(batch * 2, max(window.capacity // record_size, 1)) if matched == count else _MIN_BATCH
        return done

    def _decode_batch(self, buf: memoryview, count: int, layout: _Layout, path: str, base: int) -> int:
        """Decode the longest prefix of ``count`` records that share ``layout``; returns its length (>= 1,
        the first record is the one the layout was learned from)."""
        length = layout.length
        stride = length + FRAME_OVERHEAD
        ok = np.ndarray((count,), dtype="<u8", buffer=buf, offset=0, strides=(stride,)) == length
        if self.verify_crc:
            length_crc = masked_crc32c(struct.pack("<Q", length))
            ok &= np.ndarray((count,), dtype="<u4", buffer=buf, offset=8, strides=(stride,)) == length_crc
        for check in layout.checks:
            run = check.run
            view = np.ndarray(
                (count, run.count), dtype=np.uint8, buffer=buf,
                offset=HEADER_SIZE + run.start, strides=(stride, run.stride),
            )  # fmt: skip
            if check.mask != 0xFF:
                view = view & np.uint8(check.mask)
            ok &= (view == check.expected).all(axis=1)
        matched = count if ok.all() else int(np.argmin(ok))
        if matched == 0:  # cannot happen for a layout learned from record 0; guards against a silent hang
            raise RuntimeError(f"dump decoder: layout does not match its own record in {path!r} at {base}")
        if self.verify_crc and matched > 1:
            # Record 0's data CRC was checked by the caller.
            crcs = masked_crcs_of_rows(buf, stride + HEADER_SIZE, stride, length, matched - 1)
            stored = np.ndarray((matched - 1,), dtype="<u4", buffer=buf, offset=stride + HEADER_SIZE + length,
                                strides=(stride,))  # fmt: skip
            bad = np.flatnonzero(crcs != stored)
            if bad.size:
                raise TFRecordCorruptError(path, base + (int(bad[0]) + 1) * stride, "data CRC mismatch")
        rows = self.rows
        rows.reserve(matched)
        lo, hi = rows.n, rows.n + matched
        if layout.id_pos is None:
            rows.ids[lo:hi] = 0  # proto2 default of an absent id
        else:
            rows.ids[lo:hi] = np.ndarray(
                (matched,), dtype="<i8", buffer=buf, offset=HEADER_SIZE + layout.id_pos, strides=(stride,)
            )
        col = 0
        for run in layout.float_runs:
            rows.values[lo:hi, col : col + run.count] = np.ndarray(
                (matched, run.count), dtype="<f4", buffer=buf,
                offset=HEADER_SIZE + run.start, strides=(stride, run.stride),
            )  # fmt: skip
            col += run.count
        rows.n = hi
        return matched


def _parse_with_protobuf(data: bytes, path: str, offset: int) -> tuple[int, list[float]]:
    try:
        entry = entry_dump_pb2.EntryDump.FromString(data)
    except Exception as exc:  # protobuf's DecodeError type differs between its backends
        raise DumpFormatError(path, offset, f"cannot parse EntryDump: {exc}") from exc
    return int(entry.id), list(entry.num)


def read_dump(
    paths: Iterable[PathLike] | PathLike,
    *,
    verify_crc: bool = True,
    expected_dim: int | None = None,
    window_size: int = DUMP_WINDOW,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Read the rows of one table's dump files: ``(ids int64[n], values float32[n, dim])`` in file order.

    Every row must have the same dim (DumpFormatError names the file and offset otherwise). With no rows at
    all the values array is ``(0, expected_dim or 0)``. Duplicate ids are returned as they are.
    """
    path_list = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    reader = DumpReader(path_list, verify_crc, expected_dim, window_size)
    ids, values = reader.read()
    if reader.rows.dim is None:
        return np.empty(0, dtype=np.int64), np.empty((0, expected_dim or 0), dtype=np.float32)
    return ids, values
