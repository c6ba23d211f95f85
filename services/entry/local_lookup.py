"""An in-process ``EmbeddingLookup`` over numpy tables: the no-RPC baseline of the benchmark.

Reads every ``ps_<i>/<version>/assets`` dump of an export into one sorted table per name; lookups are a
``searchsorted`` plus a gather, unknown fids give zeros (the PS contract).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from monolith_serving.core.hash_table_dump import find_dump_files, read_dump
from monolith_serving.entry.ps_client import EmbeddingLookup, LookupResult

Int64Array = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]


class SortedTable:
    def __init__(self, ids: Int64Array, values: Float32Array) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        self.values = values[order]
        self.dim = int(values.shape[1])

    def lookup(self, fids: Int64Array) -> Float32Array:
        out = np.zeros((len(fids), self.dim), dtype=np.float32)
        if not len(self.ids):
            return out
        pos = np.minimum(np.searchsorted(self.ids, fids), len(self.ids) - 1)
        hit = self.ids[pos] == fids
        out[hit] = self.values[pos[hit]]
        return out


class LocalLookup(EmbeddingLookup):
    def __init__(self, tables: Mapping[str, SortedTable], version: int) -> None:
        self._tables = dict(tables)
        self._version = version

    @classmethod
    def from_export(cls, base_path: Path, num_ps: int, version: int) -> LocalLookup:
        ids: dict[str, list[Int64Array]] = {}
        values: dict[str, list[Float32Array]] = {}
        for shard in range(num_ps):
            assets = base_path / f"ps_{shard}" / str(version) / "assets"
            for table, paths in find_dump_files(assets, shard).items():
                table_ids, table_values = read_dump(paths)
                ids.setdefault(table, []).append(table_ids)
                values.setdefault(table, []).append(table_values)
        tables = {name: SortedTable(np.concatenate(ids[name]), np.concatenate(values[name])) for name in ids}
        return cls(tables, version)

    async def lookup(
        self,
        version: int,
        fids: Mapping[str, Int64Array],
        dims: Mapping[str, int],
        timeout_s: float,
        urgent_s: float | None = None,
    ) -> LookupResult:
        out: dict[str, Float32Array] = {}
        for name, table_fids in fids.items():
            table = self._tables.get(name)
            out[name] = (
                table.lookup(table_fids)
                if table is not None
                else np.zeros((len(table_fids), dims[name]), dtype=np.float32)
            )
        return LookupResult(out, {})
