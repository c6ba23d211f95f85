"""Embedding rows of one table version: vectorised lookup and atomic upsert.

Layout per table: a ``FidIndex`` (fid -> row) over a *base* float32 matrix (the rows loaded from the dump,
used as is, no copy) and an *extra* matrix for fids first seen through parameter sync (grown by doubling).
The fids themselves live only inside the index. Bytes per row ~ ``4 * dim`` + 23..46 (index).

Thread-safety: none inside. The PS confines every table access (lookups, upserts) to the event-loop thread,
and a handler never awaits in the middle of a lookup or an upsert, so a lookup can never see a torn row or a
half-applied request. Loading builds a new table in a worker thread; that table is only published to the
loop once it is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.ps import hash_kernels
from monolith_serving.ps.fid_index import FidIndex, Int64Array, last_occurrences
from monolith_serving.ps.serving_codec import ServingLayout

FloatMatrix = npt.NDArray[np.float32]
_MIN_EXTRA_ROWS = 1024


class EmbeddingTable:
    """One table: ``lookup`` (missing fids give zero rows) and ``upsert`` (last write of a fid wins).

    A table loaded with no rows (every dump file of its partition empty, which REFERENCE §2 allows) has dim 0:
    its width is unknown until the first sync update gives rows, and its lookups answer ``[n, 0]`` (the entry,
    which knows the width from its serving spec, reads that as all missing).

    ``layout``: how Monolith's serving PS stores this table's rows (from the export's SavedModel, ``serving_graph``).
    Every row, loaded or upserted, is kept as Monolith would answer it (e.g. rounded to fp16), and the table has the
    layout's dim even with no rows. Pass rows of that dim (the loader checks); writable rows are coded in place.
    """

    def __init__(self, name: str, fids: Int64Array, values: FloatMatrix, layout: ServingLayout | None = None) -> None:
        if values.ndim != 2 or values.shape[0] != fids.shape[0]:
            raise InvalidArgumentError(f"table {name!r}: values shape {values.shape} does not match {len(fids)} fids")
        if values.shape[1] == 0 and len(fids):
            raise InvalidArgumentError(f"table {name!r}: {len(fids)} rows of width 0")
        self.name = name
        self.dim = int(values.shape[1])
        index = FidIndex.of(fids)
        if len(index) != len(fids):
            # Duplicate fids across dump files: keep each fid's last row, as a later write would.
            keep = last_occurrences(fids)
            fids, values = fids[keep], values[keep]
            index = FidIndex.of(fids)
        self._index = index
        self.layout = layout
        self._base: FloatMatrix = np.ascontiguousarray(values, dtype=np.float32)
        if layout is not None and not layout.lossless and len(self._base):
            if not self._base.flags.writeable:
                self._base = self._base.copy()
            layout.apply(self._base)
        self._n_base = int(self._base.shape[0])
        self._extra: FloatMatrix = np.empty((0, self.dim), dtype=np.float32)
        self._n_extra = 0

    @property
    def rows(self) -> int:
        return self._n_base + self._n_extra

    @property
    def nbytes(self) -> int:
        """Resident bytes of this table (rows, spare extra capacity and the index)."""
        return int(self._base.nbytes + self._extra.nbytes + self._index.nbytes)

    def locate(self, fids: Int64Array) -> Int64Array:
        """Row numbers (base rows first, then extra rows), -1 for unknown fids."""
        return self._index.lookup(fids)

    def lookup(self, fids: Int64Array) -> tuple[FloatMatrix, int]:
        """``(float32[len(fids), dim], missing)``: zero rows for the ``missing`` fids the table does not hold."""
        out: FloatMatrix = np.empty((fids.shape[0], self.dim), dtype=np.float32)
        return out, self.lookup_into(fids, out)

    def lookup_into(self, fids: Int64Array, out: FloatMatrix) -> int:
        """Writes the rows of ``fids`` into ``out`` (C-contiguous float32 ``[len(fids), dim]``, e.g. a slice of a
        larger reply buffer); returns how many fids the table does not hold (their rows are zeros)."""
        rows = self._index.lookup(fids)
        return int(hash_kernels.gather(self._base, self._extra, rows, out))

    def fits(self, fids: Int64Array, values: FloatMatrix) -> bool:
        """Whether ``upsert(fids, values)`` is valid: rows of the table's dim, or of any dim while it has none."""
        if values.ndim != 2 or values.shape[0] != fids.shape[0]:
            return False
        width = int(values.shape[1])
        if self.dim == 0:
            return width > 0 or not len(fids)
        return width == self.dim

    def check_update(self, fids: Int64Array, values: FloatMatrix) -> None:
        """Raises InvalidArgumentError unless ``upsert(fids, values)`` would be valid (nothing changes)."""
        if not self.fits(fids, values):
            raise InvalidArgumentError(
                f"table {self.name!r}: update values shape {list(values.shape)} != [{fids.shape[0]}, {self.dim}]"
            )

    def upsert(self, fids: Int64Array, values: FloatMatrix) -> None:
        """Writes rows for ``fids``; a fid repeated in one call takes its last row. Call ``check_update``
        first: once validated this cannot fail half-way (only allocation can raise, before any write)."""
        self.check_update(fids, values)
        if not len(fids):
            return
        if self.dim == 0:
            self._take_dim(int(values.shape[1]))
        keep = last_occurrences(fids)
        if len(keep) != len(fids):
            fids, values = fids[keep], values[keep]
        if self.layout is not None:  # after dropping repeated fids: their rows need no coding
            values = self.layout.applied(values)
        rows = self._index.lookup(fids)
        new = rows < 0
        if new.any():
            new_pos = np.flatnonzero(new)
            self._reserve_extra(len(new_pos))  # may raise MemoryError; nothing written yet
            start = self._n_extra
            self._extra[start : start + len(new_pos)] = values[new_pos]
            self._index.insert_sequence(fids[new_pos], self._n_base + start)
            self._n_extra += len(new_pos)
            old = ~new
            rows, values = rows[old], values[old]
        in_base = rows < self._n_base
        if in_base.all():
            self._base[rows] = values
        else:
            self._base[rows[in_base]] = values[in_base]
            self._extra[rows[~in_base] - self._n_base] = values[~in_base]

    def _take_dim(self, dim: int) -> None:
        self.dim = dim
        self._base = np.empty((0, dim), dtype=np.float32)
        self._extra = np.empty((0, dim), dtype=np.float32)

    def _reserve_extra(self, count: int) -> None:
        need = self._n_extra + count
        if need <= self._extra.shape[0]:
            return
        capacity = max(need, 2 * self._extra.shape[0], _MIN_EXTRA_ROWS)
        grown = np.empty((capacity, self.dim), dtype=np.float32)
        grown[: self._n_extra] = self._extra[: self._n_extra]
        self._extra = grown


@dataclass(frozen=True)
class TableSet:
    """The tables of one sub-model version, in the model's table order (sorted names)."""

    tables: dict[str, EmbeddingTable]

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(sorted(self.tables))

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tables.values())
