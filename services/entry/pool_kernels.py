"""Compiled kernels behind ``pooling.Pooler``: deduplicating a table's fids, and pooling its embeddings.

In numpy both take a dozen or more small calls per table (sort, mask, cumsum, reduceat, fancy indexing), each a
few microseconds of dispatch on a few hundred fids; at batch 16 that made planning and pooling ~13 % of the
entry's event-loop thread. One compiled pass per table does the same work in a single call.
"""

from __future__ import annotations

from typing import Any

import numba  # type: ignore[import-untyped,unused-ignore]
import numpy as np

from monolith_serving.core.compiled import kernel
from monolith_serving.core.fid_hash import home_slot_by

__all__ = ["FIRSTN", "MEAN", "SUM", "pool_table", "unique_inverse"]

# Pooling codes in the per-feature ``kinds`` array.
SUM = 0
MEAN = 1
FIRSTN = 2

_I64 = numba.types.Array(numba.int64, 1, "C")
_I64_RO = numba.types.Array(numba.int64, 1, "C", readonly=True)
_F32_2D = numba.types.Array(numba.float32, 2, "C")
_F32_2D_RO = numba.types.Array(numba.float32, 2, "C", readonly=True)
_F32_2D_ANY = numba.types.Array(numba.float32, 2, "A")
_UNIQUE_INVERSE = numba.types.Tuple((_I64, _I64))  # type: ignore[no-untyped-call,unused-ignore]


@kernel([_UNIQUE_INVERSE(fids, numba.int64) for fids in (_I64, _I64_RO)])
def unique_inverse(fids: Any, multiplier: int) -> Any:
    """(the distinct fids in order of first occurrence, the index of each fid among them).

    A hash table sized to the batch rather than a sort: O(n), and numpy's argsort of a few thousand random int64
    fids alone took longer than this whole pass. ``multiplier`` (odd; ``core.fid_hash.random_multiplier``) keeps
    a client from choosing fids that collide.
    """
    n = fids.shape[0]
    bits = 4
    while (1 << bits) < 2 * n:  # load factor at most 1/2
        bits += 1
    mask = (1 << bits) - 1
    shift = 64 - bits
    slots = np.full(1 << bits, -1, dtype=np.int64)  # index into unique, -1 when free
    unique = np.empty(n, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int64)
    count = 0
    for i in range(n):
        fid = fids[i]
        p = home_slot_by(fid, multiplier, shift, mask)
        while True:
            u = slots[p]
            if u < 0:
                slots[p] = count
                unique[count] = fid
                inverse[i] = count
                count += 1
                break
            if unique[u] == fid:
                inverse[i] = u
                break
            p = (p + 1) & mask
    return unique[:count].copy(), inverse


@kernel(
    [
        numba.void(values, _I64, rows, _I64_RO, _I64_RO, _I64_RO, _I64_RO, _F32_2D_ANY)
        for values in (_F32_2D, _F32_2D_RO)
        for rows in (_I64, _I64_RO)
    ]
)
def pool_table(
    values: Any, inverse: Any, rows: Any, offsets: Any, kinds: Any, columns: Any, first_n: Any, x: Any
) -> None:
    """Pools the features of one table into their columns of ``x`` (rows of ``x`` start zeroed).

    Feature k's fids are positions ``offsets[k]:offsets[k+1]`` of ``inverse``/``rows`` (its embedding is
    ``values[inverse[p]]``, its example ``rows[p]``, non-decreasing within the feature). ``kinds[k]`` is SUM,
    MEAN or FIRSTN; the feature's first column is ``columns[k]``; FIRSTN keeps an example's first
    ``first_n[k]`` fids, the p-th at ``columns[k] + p * dim``. Mean divides by the example's fid count.
    """
    dim = values.shape[1]
    for k in range(kinds.shape[0]):
        lo, hi = offsets[k], offsets[k + 1]
        column = columns[k]
        kind = kinds[k]
        p = lo
        while p < hi:
            row = rows[p]
            end = p + 1
            while end < hi and rows[end] == row:
                end += 1
            if kind == FIRSTN:
                last = min(end, p + first_n[k])
                for q in range(p, last):
                    base = column + (q - p) * dim
                    source = inverse[q]
                    for d in range(dim):
                        x[row, base + d] = values[source, d]
            else:
                for q in range(p, end):
                    source = inverse[q]
                    for d in range(dim):
                        x[row, column + d] += values[source, d]
                if kind == MEAN:
                    count = np.float32(end - p)
                    for d in range(dim):
                        x[row, column + d] /= count
            p = end
