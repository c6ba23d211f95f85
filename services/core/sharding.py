"""The sharding rule of Monolith's PS: fid ``f`` lives on shard ``f mod num_ps`` (floor modulo)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]


def shard_of(fids: Int64Array, num_ps: int) -> Int64Array:
    """``fid mod num_ps``, floor modulo (never negative, negative fids included).

    numpy's ``%`` on int64 is floor modulo but costs an integer division per fid; for a power-of-two
    ``num_ps`` a bitwise and gives the same result (two's complement) several times faster. The entry's
    fan-out, the PS's shard check and the demo export all split fids with this one function.
    """
    if num_ps & (num_ps - 1) == 0:
        return fids & (num_ps - 1)
    shards: Int64Array = fids % num_ps
    return shards
