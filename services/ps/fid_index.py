"""A vectorised int64 -> row hash index: one open-addressing table, probed by compiled kernels (``hash_kernels``).

Memory: 16 bytes per slot at a load factor kept between 0.35 and 0.7, i.e. 23-46 bytes per key (33.5 at 1M keys).
Growing doubles the slot array and re-inserts every key (one pass, GIL released), so an upsert that crosses the
threshold pays that once; loads size the table for their rows up front and never grow.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from monolith_serving.ps import hash_kernels

Int64Array = npt.NDArray[np.int64]

_MAX_LOAD = 0.7
_MIN_CAPACITY = 16


def _shift_for(capacity: int) -> int:
    """The hash shift of a power-of-two ``capacity``: the home slot is the top log2(capacity) bits."""
    return 64 - (capacity.bit_length() - 1)


def _capacity_for(keys: int) -> int:
    """The smallest power of two holding ``keys`` at no more than the maximum load factor."""
    need = max(_MIN_CAPACITY, int(np.ceil(keys / _MAX_LOAD)) + 1)
    return 1 << (need - 1).bit_length()


class FidIndex:
    """Maps fids to row numbers. Not thread-safe: one thread (the owner's) calls it at a time."""

    def __init__(self, size_hint: int = 0) -> None:
        self._slots: Int64Array = self._empty_slots(_capacity_for(size_hint))
        self._count = 0

    @staticmethod
    def _empty_slots(capacity: int) -> Int64Array:
        return np.zeros((capacity, 2), dtype=np.int64)  # zero pages are mapped lazily: no cost until touched

    @property
    def _shift(self) -> int:
        return _shift_for(int(self._slots.shape[0]))

    @classmethod
    def of(cls, fids: Int64Array) -> FidIndex:
        """An index mapping ``fids[i] -> i``; for a repeated fid its last position wins."""
        index = cls(len(fids))
        index.insert_sequence(fids, 0)
        return index

    def __len__(self) -> int:
        return self._count

    def lookup(self, fids: Int64Array) -> Int64Array:
        """Row of each fid, -1 where absent."""
        rows = np.empty(len(fids), dtype=np.int64)
        if len(fids):
            hash_kernels.locate(self._slots, self._shift, np.ascontiguousarray(fids, dtype=np.int64), rows)
        return rows

    def insert(self, fids: Int64Array, rows: Int64Array) -> None:
        """Sets ``fids[i] -> rows[i]`` (overwriting existing keys)."""
        if not len(fids):
            return
        self._reserve(len(fids))
        self._count += hash_kernels.insert(
            self._slots,
            self._shift,
            np.ascontiguousarray(fids, dtype=np.int64),
            np.ascontiguousarray(rows, dtype=np.int64),
        )

    def insert_sequence(self, fids: Int64Array, first_row: int) -> None:
        """``insert(fids, first_row + arange(len(fids)))`` without allocating the rows."""
        if not len(fids):
            return
        self._reserve(len(fids))
        self._count += hash_kernels.insert_sequence(
            self._slots, self._shift, np.ascontiguousarray(fids, dtype=np.int64), first_row
        )

    def _reserve(self, new_keys: int) -> None:
        """Sized for the worst case (all new) so a kernel never meets a full table."""
        if self._count + new_keys > _MAX_LOAD * self._slots.shape[0]:
            self._grow(_capacity_for(self._count + new_keys))

    def _grow(self, capacity: int) -> None:
        grown = self._empty_slots(capacity)
        hash_kernels.rehash(self._slots, _shift_for(capacity), grown)
        self._slots = grown

    @property
    def nbytes(self) -> int:
        return int(self._slots.nbytes)


def last_occurrences(fids: Int64Array) -> Int64Array:
    """Positions of the last occurrence of each distinct fid (ascending); all positions when unique."""
    index = FidIndex.of(fids)
    if len(index) == len(fids):
        return np.arange(len(fids), dtype=np.int64)
    return np.flatnonzero(index.lookup(fids) == np.arange(len(fids))).astype(np.int64)
