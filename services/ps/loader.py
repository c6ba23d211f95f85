"""Reading one sub-model version's hash-table dumps into tables (runs in a worker thread)."""

from __future__ import annotations

import logging
from pathlib import Path

from monolith_serving.core.hash_table_dump import find_dump_files, read_dump
from monolith_serving.ps.table_store import EmbeddingTable, TableSet

logger = logging.getLogger(__name__)


def load_version(version_path: Path, partition: int) -> TableSet:
    """Every table's ``MonolithHashTable_<table>_<partition>-*-of-*`` files under ``<version>/assets``.

    Each table's files are read into one pre-sized matrix (no second copy). Raises the dump reader's errors
    (NotFoundError, InvalidArgumentError incl. TFRecordCorruptError) unchanged; the caller turns them into the
    version's END status.
    """
    files = find_dump_files(version_path / "assets", partition)
    if not files:
        logger.warning("%s holds no dump files of partition %d: serving no tables", version_path, partition)
    tables: dict[str, EmbeddingTable] = {}
    for name, paths in files.items():
        fids, values = read_dump(paths)
        tables[name] = EmbeddingTable(name, fids, values)
        del fids, values
    return TableSet(tables)
