"""``shard_of`` (PS shard check and entry fan-out) is floor modulo for every num_ps, negative fids included."""

from __future__ import annotations

import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.entry.ps_client import shard_of as entry_shard_of
from monolith_serving.ps.inputs import ShardCheck
from monolith_serving.ps.inputs import shard_of as ps_shard_of

FIDS = np.concatenate(
    [
        np.random.default_rng(3).integers(-(2**63), 2**63 - 1, size=2000, dtype=np.int64),
        np.array([-(2**63), -1, 0, 1, 2**63 - 1, -7, 7], dtype=np.int64),
    ]
)


@pytest.mark.parametrize("num_ps", [1, 2, 3, 4, 5, 7, 8, 16, 100])
def test_shard_of_is_python_floor_modulo(num_ps: int) -> None:
    expected = [fid % num_ps for fid in FIDS.tolist()]
    assert ps_shard_of(FIDS, num_ps).tolist() == expected
    assert entry_shard_of(FIDS, num_ps).tolist() == expected


@pytest.mark.parametrize("num_ps", [2, 3, 4])
def test_shard_check_accepts_exactly_its_fids(num_ps: int) -> None:
    for partition in range(num_ps):
        mine = np.array([fid for fid in FIDS.tolist() if fid % num_ps == partition], dtype=np.int64)
        ShardCheck(num_ps, partition).check(mine, "t_id")
        other = np.array([fid for fid in FIDS.tolist() if fid % num_ps != partition][:1], dtype=np.int64)
        with pytest.raises(InvalidArgumentError, match=f"do not belong to shard {partition} of {num_ps}"):
            ShardCheck(num_ps, partition).check(np.concatenate([mine, other]), "t_id")
