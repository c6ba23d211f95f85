"""The home slot of an int64 fid in a power-of-two open-addressing table, for compiled kernels to inline.

Fibonacci hashing: the top ``64 - shift`` bits of ``key * 2^64/phi``. Multiplying by the golden ratio spreads
consecutive or strided keys (fids of one slot differ only in their low bits) over those top bits.
"""

from __future__ import annotations

import numba  # type: ignore[import-untyped,unused-ignore]
import numpy as np

__all__ = ["home_slot"]

_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def home_slot(key: int, shift: int, mask: int) -> int:
    """Slot of ``key`` in a table of ``2^(64 - shift)`` slots (``mask`` = slots - 1)."""
    return int((np.uint64(key) * _FIBONACCI) >> np.uint64(shift)) & mask
