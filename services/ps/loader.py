"""Reading one sub-model version's hash-table dumps into tables (runs in a worker thread)."""

from __future__ import annotations

from pathlib import Path

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.hash_table_dump import (
    NATIVE_MULTI_DUMP_PREFIX,
    explain_missing_dumps,
    find_dump_files,
    find_native_dump_files,
    read_dump,
)
from monolith_serving.core.native_multi_dump import read_native_dump
from monolith_serving.ps.table_store import EmbeddingTable, TableSet


def load_version(version_path: Path, partition: int) -> TableSet:
    """The tables of ``partition`` under ``<version>/assets``, from either kind of dump Monolith exports:

    - per-table ``MonolithHashTable_<table>_<partition>-*-of-*`` files (``use_native_multi_hash_table=False``);
    - a native multi-hash-table dump ``MonolithMultiHashTable_<partition>-*-of-*`` with its ``.meta-*`` files
      (Monolith's default), split into tables by the metadata.

    Each table's rows are read into one pre-sized matrix (no second copy). A version holding both kinds for
    ``partition`` raises InvalidArgumentError (which one is current cannot be told). A version with neither
    raises NotFoundError naming the folder and the names expected: published, it would replace the serving version
    with no tables. Empty dump files and tables without rows are fine (a partition with no rows of a table). Raises
    the readers' errors (NotFoundError, InvalidArgumentError incl. TFRecordCorruptError) unchanged; the caller turns
    them into the version's END status. Nothing is returned partially.
    """
    assets = version_path / "assets"
    files = find_dump_files(assets, partition)
    native = find_native_dump_files(assets, partition)
    if files and native:
        raise InvalidArgumentError(
            f"{str(assets)!r} holds both per-table dumps of partition {partition} ({len(files)} tables) and a native "
            f"multi-hash-table dump ({NATIVE_MULTI_DUMP_PREFIX}{partition}-*, {len(native)} parts): refusing to guess "
            "which one this version serves; an export holds one kind"
        )
    tables: dict[str, EmbeddingTable] = {}
    if native:
        for name, (fids, values) in read_native_dump(native).items():
            tables[name] = EmbeddingTable(name, fids, values)
            del fids, values
        return TableSet(tables)
    if not files:
        raise NotFoundError(explain_missing_dumps(assets, partition))
    for name, paths in files.items():
        fids, values = read_dump(paths)
        tables[name] = EmbeddingTable(name, fids, values)
        del fids, values
    return TableSet(tables)
