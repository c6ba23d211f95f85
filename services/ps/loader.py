"""Reading one sub-model version's hash-table dumps into tables (runs in a worker thread)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.hash_table_dump import (
    DUMP_PREFIX,
    NATIVE_MULTI_DUMP_PREFIX,
    explain_missing_dumps,
    find_dump_files,
    find_native_dump_files,
    read_dump,
)
from monolith_serving.core.native_multi_dump import read_native_dump
from monolith_serving.ps.fid_index import Int64Array
from monolith_serving.ps.serving_codec import ServingLayout
from monolith_serving.ps.serving_graph import SAVED_MODEL_FILE, read_restore_basenames, read_table_layouts
from monolith_serving.ps.table_store import EmbeddingTable, FloatMatrix, TableSet

logger = logging.getLogger(__name__)


def load_version(version_path: Path, partition: int) -> TableSet:
    """The tables of ``partition`` under ``<version>/assets`` (or where the graph restores them from, see
    ``dump_folder``), from either kind of dump Monolith exports:

    - per-table ``MonolithHashTable_<table>_<partition>-*-of-*`` files (``use_native_multi_hash_table=False``);
    - a native multi-hash-table dump ``MonolithMultiHashTable_<partition>-*-of-*`` with its ``.meta-*`` files
      (Monolith's default), split into tables by the metadata.

    Each table's rows are read into one pre-sized matrix (no second copy). A version holding both kinds for
    ``partition`` raises InvalidArgumentError (which one is current cannot be told). A version with neither
    raises NotFoundError naming the folder and the names expected: published, it would replace the serving version
    with no tables. Empty dump files and tables without rows are fine (a partition with no rows of a table). Raises
    the readers' errors (NotFoundError, InvalidArgumentError incl. TFRecordCorruptError) unchanged; the caller turns
    them into the version's END status. Nothing is returned partially.

    A Monolith export's ``<version>/saved_model.pb`` names each table's segments and serving codecs
    (``serving_graph``); the tables then hold their rows as Monolith's serving PS does (``_served_table``).
    """
    layouts = read_table_layouts(version_path, partition)
    if layouts:
        described = {name: "+".join(f"{s.codec.value}:{s.dim}" for s in layout.segments) if layout else "as dumped"
                     for name, layout in sorted(layouts.items())}  # fmt: skip
        logger.info("%s: serving codecs from %s: %s", version_path, SAVED_MODEL_FILE, described)
    assets = dump_folder(version_path, partition)
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
            tables[name] = _served_table(name, fids, values, layouts, version_path)
            del fids, values
        # Monolith's multi-hash table holds every table of its config; one its dump does not list has no rows.
        for name, layout in (layouts or {}).items():
            if name not in tables and layout is not None:
                no_rows = np.empty((0, layout.dim), dtype=np.float32)
                tables[name] = EmbeddingTable(name, np.empty(0, dtype=np.int64), no_rows, layout)
        return TableSet(tables)
    if not files:
        raise NotFoundError(explain_missing_dumps(assets, partition))
    missing = sorted(set(layouts or {}) - set(files))
    if missing:
        # Monolith restores each per-table hash table of the graph from its own files and fails without them.
        raise NotFoundError(
            f"{str(assets)!r}: no dump files of table {missing[0]!r} (partition {partition}), which "
            f"{SAVED_MODEL_FILE} creates; expected {DUMP_PREFIX}{missing[0]}_{partition}-<j>-of-<m>"
        )
    for name, paths in files.items():
        fids, values = read_dump(paths)
        tables[name] = _served_table(name, fids, values, layouts, version_path)
        del fids, values
    return TableSet(tables)


def _holds_dumps(folder: Path, partition: int) -> bool:
    return folder.is_dir() and bool(find_dump_files(folder, partition) or find_native_dump_files(folder, partition))


def dump_folder(version_path: Path, partition: int) -> Path:
    """Where the dumps of ``partition`` are: ``<version>/assets`` when it holds them; else, for an export made with
    Monolith's default ``shared_embedding``, the folder its ``saved_model.pb`` restores them from (the training
    checkpoint's ``<ckpt>.assets/``, not copied into the export), when this machine can read it. A checkpoint
    folder this machine cannot read is NotFoundError naming it; without either, ``<version>/assets`` (the caller
    explains what is missing there)."""
    assets = version_path / "assets"
    if _holds_dumps(assets, partition):
        return assets
    folders: list[str] = []
    for basename in read_restore_basenames(version_path, partition):
        folder = basename.rstrip("/").rsplit("/", 1)[0] if "/" in basename.rstrip("/") else "."
        if folder not in folders:
            folders.append(folder)
    if not folders:
        return assets
    if len(folders) > 1:
        raise InvalidArgumentError(
            f"{str(version_path)!r}: {SAVED_MODEL_FILE} restores partition {partition} from {len(folders)} folders "
            f"({', '.join(map(repr, folders))}); an export restores from one checkpoint"
        )
    (folder,) = folders
    local = folder.removeprefix("file://")
    if "://" in local:
        raise NotFoundError(
            f"{str(assets)!r} holds no dump of partition {partition}, and {SAVED_MODEL_FILE} restores it from "
            f"{folder!r}, the training checkpoint's assets (Monolith's shared_embedding export), which this PS cannot "
            "read: it reads local folders only. Export with shared_embedding off, or copy or mount that folder here "
            "and write its local path into the graph"
        )
    # A relative basename is the export's own asset tensor (Monolith's is "./"), which TF Serving points at assets/.
    path = Path(local) if Path(local).is_absolute() else assets / local
    if path.resolve() == assets.resolve():
        return assets  # the export's own assets after all: the caller explains what is missing there
    if not _holds_dumps(path, partition):
        raise NotFoundError(
            f"{str(assets)!r} holds no dump of partition {partition}, and {SAVED_MODEL_FILE} restores it from "
            f"{folder!r} (the training checkpoint's assets, Monolith's shared_embedding export), which "
            + ("holds none either" if path.is_dir() else "is not a folder on this machine")
        )
    logger.info("%s: partition %d restored from the checkpoint's assets %s (shared_embedding)", version_path,
                partition, path)  # fmt: skip
    return path


def _served_table(
    name: str,
    fids: Int64Array,
    values: FloatMatrix,
    layouts: dict[str, ServingLayout | None] | None,
    version_path: Path,
) -> EmbeddingTable:
    """Table ``name`` of the dumps, held as the export's SavedModel says (``layouts``, None: the version has none).

    The config's dim is the table's: dumped rows of another dim are InvalidArgumentError (Monolith copies them into
    rows of its dim unchecked, cutting or overrunning them). A table the graph does not create is served as dumped,
    with a warning (Monolith's PS would not serve it at all)."""
    if layouts is None:
        return EmbeddingTable(name, fids, values)
    if name not in layouts:
        logger.warning(
            "%s: table %r has dumps but %s creates no such table; serving its rows as dumped",
            version_path, name, SAVED_MODEL_FILE,
        )  # fmt: skip
        return EmbeddingTable(name, fids, values)
    layout = layouts[name]
    if layout is None:
        return EmbeddingTable(name, fids, values)
    if len(fids) and values.shape[1] != layout.dim:
        raise InvalidArgumentError(
            f"{str(version_path)!r}: table {name!r}: the dumps' rows have dim {values.shape[1]}, its config in "
            f"{SAVED_MODEL_FILE} has dim {layout.dim} ({'+'.join(str(s.dim) for s in layout.segments)})"
        )
    if not len(fids):
        values = np.empty((0, layout.dim), dtype=np.float32)
    return EmbeddingTable(name, fids, values, layout)
