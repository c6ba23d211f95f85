"""The bit layout of Monolith's feature ids (REFERENCE §1): one definition for every module that splits or builds fids.

- v1: ``slot << 54 | hash54``, 10 slot bits (slots 0..1023; from 512 on, bit 63 is set and the int64 is negative);
- v2: ``slot << 48 | hash48``, 15 slot bits (bit 63 is never set).

A v1 fid becomes a v2 fid as ``(fid >> 54) << 48 | (fid & FID_V2_HASH_MASK)``.
"""

from __future__ import annotations

FID_V1_SLOT_SHIFT = 54
FID_V2_SLOT_SHIFT = 48
FID_V2_HASH_MASK = (1 << FID_V2_SLOT_SHIFT) - 1
FID_V1_SLOTS = 1 << (64 - FID_V1_SLOT_SHIFT)
