"""Reading one sub-model version's hash-table dumps into tables (runs in a worker thread)."""

from __future__ import annotations

from pathlib import Path

from monolith_serving.core.errors import NotFoundError
from monolith_serving.core.hash_table_dump import explain_missing_dumps, find_dump_files, read_dump
from monolith_serving.ps.table_store import EmbeddingTable, TableSet


def load_version(version_path: Path, partition: int) -> TableSet:
    """Every table's ``MonolithHashTable_<table>_<partition>-*-of-*`` files under ``<version>/assets``.

    Each table's files are read into one pre-sized matrix (no second copy). A version with no dump file at all
    for ``partition`` raises NotFoundError naming the folder and the names expected (and native multi-hash-table
    dumps, which are not supported, when it holds those): published, it would replace the serving version with
    no tables. Empty dump files are fine (a partition with no rows of a table). Raises the dump reader's errors
    (NotFoundError, InvalidArgumentError incl. TFRecordCorruptError) unchanged; the caller turns them into the
    version's END status.
    """
    assets = version_path / "assets"
    files = find_dump_files(assets, partition)
    if not files:
        raise NotFoundError(explain_missing_dumps(assets, partition))
    tables: dict[str, EmbeddingTable] = {}
    for name, paths in files.items():
        fids, values = read_dump(paths)
        tables[name] = EmbeddingTable(name, fids, values)
        del fids, values
    return TableSet(tables)
