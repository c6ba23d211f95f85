"""The home slot of an int64 fid in a power-of-two open-addressing table, for compiled kernels to inline.

Multiply-shift hashing: the top ``64 - shift`` bits of ``key * multiplier`` (mod 2^64), the multiplier odd.

- The PS index uses the golden-ratio multiplier ``2^64/phi`` (Fibonacci hashing): it spreads consecutive or
  strided keys (fids of one slot differ only in their low bits) over the top bits. Its keys come from the
  model's dump and the trainers, not from clients.
- A table built from a client's fids (the entry's per-batch dedup) takes a random odd multiplier instead
  (``random_multiplier``). With a fixed, known one a client can pick fids that all share a home slot
  (multiples of the multiplier's inverse), and linear probing then costs O(n²) for n fids. With a random
  one, multiply-shift hashing is universal: no choice of fids collides more than chance allows.
"""

from __future__ import annotations

import secrets

import numba  # type: ignore[import-untyped,unused-ignore]
import numpy as np

__all__ = ["FIBONACCI", "home_slot", "home_slot_by", "random_multiplier"]

FIBONACCI = 0x9E3779B97F4A7C15


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def home_slot_by(key: int, multiplier: int, shift: int, mask: int) -> int:
    """Slot of ``key`` in a table of ``2^(64 - shift)`` slots (``mask`` = slots - 1), for an odd ``multiplier``."""
    return int((np.uint64(key) * np.uint64(multiplier)) >> np.uint64(shift)) & mask


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def home_slot(key: int, shift: int, mask: int) -> int:
    """``home_slot_by`` with the golden-ratio multiplier (Fibonacci hashing): the PS index's."""
    return home_slot_by(key, FIBONACCI, shift, mask)


def random_multiplier() -> int:
    """An odd multiplier from the OS's randomness, as an int64 bit pattern (what the kernels take)."""
    value = secrets.randbits(64) | 1
    return value - (1 << 64) if value >= 1 << 63 else value
