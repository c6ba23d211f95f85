"""Reading Monolith's native multi-hash-table dumps (``use_native_multi_hash_table``, Monolith's default).

Monolith's ``MonolithMultiHashTableSave`` (runtime/ops/multi_hash_table_save_restore_ops.cc, ``SaveOneShard``)
writes one pair of files per part ``j`` of ``m`` of PS ``k``'s multi-hash table:

- ``MonolithMultiHashTable_<k>-<j>-of-<m>``: a TFRecord file with TF's SNAPPY compression (see
  :class:`~monolith_serving.core.tfrecord.SnappyBlockStream`) of ``EntryDump`` records: every table's rows of
  this part, one table after the other;
- ``MonolithMultiHashTable_<k>.meta-<j>-of-<m>``: an uncompressed TFRecord file with one
  ``MultiHashTableMetadata{table_name, num_entries}`` per table, in the data file's order (every table of the
  multi-hash table, sorted by name, also those with no rows in this part).

The data file is split by the metadata counts; a table's rows are the union of its rows in every part. Rows are
decoded by the plain dump reader (batched numpy over the decompressed stream), each table pre-sized from the
counts. Table names are Monolith's feature names (the native table is not merged by config).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.hash_table_dump import DUMP_WINDOW, DumpFormatError, DumpReader, NativeDumpPart
from monolith_serving.core.tfrecord import FRAME_OVERHEAD, RecordWindow, SnappyBlockStream, iter_records
from monolith_serving.proto_gen.monolith.hash_table import multi_hash_table_metadata_pb2


class NativeDumpError(InvalidArgumentError):
    """A native multi-hash-table dump is inconsistent (metadata unreadable, counts not matching the data file,
    a table whose rows disagree on dim); names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"bad native multi-hash-table dump {path!r}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TableCount:
    """One metadata record: ``num_entries`` rows of ``table_name`` follow in the data file."""

    table: str
    rows: int


def read_native_metadata(path: str) -> list[TableCount]:
    """The records of one ``.meta`` file, in order. Raises TFRecordCorruptError or NativeDumpError."""
    counts: list[TableCount] = []
    seen: set[str] = set()
    for index, record in enumerate(iter_records(path)):
        try:
            meta = multi_hash_table_metadata_pb2.MultiHashTableMetadata.FromString(record)
        except Exception as exc:  # protobuf's DecodeError type differs between its backends
            raise NativeDumpError(path, f"metadata record {index} does not parse: {exc}") from exc
        if not meta.table_name:
            raise NativeDumpError(path, f"metadata record {index} has no table_name")
        if meta.table_name in seen:
            raise NativeDumpError(path, f"table {meta.table_name!r} is listed twice")
        seen.add(meta.table_name)
        counts.append(TableCount(meta.table_name, int(meta.num_entries)))
    return counts


def read_native_dump(
    parts: list[NativeDumpPart], *, verify_crc: bool = True, window_size: int = DUMP_WINDOW
) -> dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """Every table of a native dump: ``{table: (ids int64[n], values float32[n, dim])}``, rows in file order.

    A table with no rows in any part is returned with values ``(0, 0)`` (its dim is unknown). Raises
    NativeDumpError when a data file holds fewer or more records than its metadata counts or a table's rows
    disagree on dim, TFRecordCorruptError for corrupt framing or snappy blocks, DumpFormatError for bad rows;
    nothing is returned partially.
    """
    metas = [read_native_metadata(str(part.meta)) for part in parts]
    totals: dict[str, int] = {}
    for meta in metas:
        for count in meta:
            totals[count.table] = totals.get(count.table, 0) + count.rows
    with contextlib.ExitStack() as stack:
        streams: list[SnappyBlockStream] = []
        for part, meta in zip(parts, metas, strict=True):
            stream = SnappyBlockStream(stack.enter_context(open(part.data, "rb")), str(part.data))
            claimed = sum(count.rows for count in meta)
            # Checked before anything is allocated from the counts: every record takes at least its framing.
            if claimed > stream.size_bytes // FRAME_OVERHEAD:
                raise NativeDumpError(
                    str(part.data),
                    f"its metadata {str(part.meta)!r} counts {claimed} rows, more than the "
                    f"{stream.size_bytes} decompressed bytes can hold",
                )
            streams.append(stream)
        readers = {table: DumpReader([], verify_crc, None, window_size, expected_rows=n) for table, n in totals.items()}
        for part, meta, stream in zip(parts, metas, streams, strict=True):
            _read_part(part, meta, stream, readers, window_size)
    tables: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = {}
    for table, reader in readers.items():
        if reader.rows.dim is None:
            tables[table] = (np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32))
        else:
            tables[table] = reader.rows.result()
    return tables


def _read_part(
    part: NativeDumpPart,
    meta: list[TableCount],
    stream: SnappyBlockStream,
    readers: dict[str, DumpReader],
    window_size: int,
) -> None:
    path = str(part.data)
    window = RecordWindow(stream, path, window_size, size_bytes=stream.size_bytes)
    for count in meta:
        try:
            got = readers[count.table].read_records(window, count.rows)
        except DumpFormatError as exc:
            raise NativeDumpError(
                path, f"table {count.table!r}: {exc.reason} (at byte {exc.offset} of the decompressed records)"
            ) from exc
        if got < count.rows:
            raise NativeDumpError(
                path,
                f"its records end after {got} of the {count.rows} rows of table {count.table!r} that its "
                f"metadata {str(part.meta)!r} counts",
            )
    if not window.at_end():
        listed = sum(count.rows for count in meta)
        raise NativeDumpError(path, f"it holds more records than the {listed} its metadata {str(part.meta)!r} counts")
