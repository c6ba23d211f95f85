"""Compiled kernels behind ``FidIndex`` and the table gather: an open-addressing int64 -> row hash.

Why compiled: a lookup is one random memory access per fid into a table far larger than the CPU caches, then one
into the row matrix. The CPU overlaps many such misses only when the loop that issues them is tight machine code;
numpy cannot express a probe without several passes over temporaries, and pandas' khash reads three separate
arrays per key. Here a slot is 16 bytes, ``(key, row + 1)``, so a probe costs one cache line, and the gather copies
rows straight into the reply buffer.

Layout: ``slots`` is int64 ``[capacity, 2]``, capacity a power of two; ``slots[p, 1] == 0`` marks an empty slot,
so every int64 is a valid key. The home slot of a key is the top ``log2(capacity)`` bits of ``key * 2^64/phi``
(Fibonacci hashing); collisions probe linearly. There are no deletes (the PS never removes a fid from a
version), which keeps linear probing exact without tombstones.

The kernels are compiled when this module is imported (``core.compiled.kernel``: fixed signatures, cached on disk
where possible). They release the GIL: a version being loaded in a worker thread does not stall the event loop
serving lookups.
"""

from __future__ import annotations

from typing import Any

import numba  # type: ignore[import-untyped,unused-ignore]

from monolith_serving.core.compiled import kernel
from monolith_serving.core.fid_hash import home_slot

_SLOTS = numba.types.Array(numba.int64, 2, "C")
_MATRIX = numba.types.Array(numba.float32, 2, "C")
# Request tensors arrive as read-only views of the request bytes (no copy), so id arrays may be either kind.
_IDS = (numba.types.Array(numba.int64, 1, "C"), numba.types.Array(numba.int64, 1, "C", readonly=True))


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def _put(slots: Any, shift: int, mask: int, key: int, stored: int) -> int:
    """Sets ``key``'s slot to ``stored`` (row + 1); 1 when the key was new, else 0. A free slot must exist."""
    p = home_slot(key, shift, mask)
    while True:
        if slots[p, 1] == 0:
            slots[p, 0] = key
            slots[p, 1] = stored
            return 1
        if slots[p, 0] == key:
            slots[p, 1] = stored
            return 0
        p = (p + 1) & mask


@kernel([numba.int64(_SLOTS, numba.int64, keys, rows) for keys in _IDS for rows in _IDS])
def insert(slots: Any, shift: int, keys: Any, rows: Any) -> int:
    """Sets ``keys[i] -> rows[i]`` in order (a later duplicate overwrites); returns how many keys were new.
    The caller keeps the load factor below 1, so a free slot always exists."""
    mask = slots.shape[0] - 1
    added = 0
    for i in range(keys.shape[0]):
        added += _put(slots, shift, mask, keys[i], rows[i] + 1)
    return added


@kernel([numba.int64(_SLOTS, numba.int64, keys, numba.int64) for keys in _IDS])
def insert_sequence(slots: Any, shift: int, keys: Any, first_row: int) -> int:
    """``insert`` with ``rows[i] = first_row + i``, without materialising the rows (8 bytes per key less at the
    peak of a load, when two versions are resident)."""
    mask = slots.shape[0] - 1
    added = 0
    for i in range(keys.shape[0]):
        added += _put(slots, shift, mask, keys[i], first_row + i + 1)
    return added


@kernel([numba.void(_SLOTS, numba.int64, keys, _IDS[0]) for keys in _IDS])
def locate(slots: Any, shift: int, keys: Any, out_rows: Any) -> None:
    """``out_rows[i]`` = row of ``keys[i]``, -1 when absent."""
    mask = slots.shape[0] - 1
    for i in range(keys.shape[0]):
        key = keys[i]
        p = home_slot(key, shift, mask)
        while True:
            stored = slots[p, 1]
            if stored == 0:
                out_rows[i] = -1
                break
            if slots[p, 0] == key:
                out_rows[i] = stored - 1
                break
            p = (p + 1) & mask


@kernel([numba.void(_SLOTS, numba.int64, _SLOTS)])
def rehash(old_slots: Any, shift: int, new_slots: Any) -> None:
    """Moves every occupied slot of ``old_slots`` into the empty, larger ``new_slots``."""
    mask = new_slots.shape[0] - 1
    for q in range(old_slots.shape[0]):
        stored = old_slots[q, 1]
        if stored == 0:
            continue
        key = old_slots[q, 0]
        p = home_slot(key, shift, mask)
        while new_slots[p, 1] != 0:
            p = (p + 1) & mask
        new_slots[p, 0] = key
        new_slots[p, 1] = stored


@kernel([numba.int64(_MATRIX, _MATRIX, _IDS[0], _MATRIX)])
def gather(base: Any, extra: Any, rows: Any, out: Any) -> int:
    """``out[i]`` = row ``rows[i]`` of ``base`` stacked over ``extra``, zeros where ``rows[i] < 0``;
    returns the number of such missing rows."""
    n_base = base.shape[0]
    dim = out.shape[1]
    missing = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0:
            missing += 1
            for c in range(dim):
                out[i, c] = 0.0
        elif r < n_base:
            for c in range(dim):
                out[i, c] = base[r, c]
        else:
            e = r - n_base
            for c in range(dim):
                out[i, c] = extra[e, c]
    return missing
