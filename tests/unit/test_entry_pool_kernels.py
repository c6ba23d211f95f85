"""pool_kernels.unique_inverse on the whole int64 range (v2 fids use all 64 bits; the pooling test keeps to 0..20)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_serving.entry.pool_kernels import unique_inverse

INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(INT64, st.integers(-3, 3)), max_size=200))
def test_unique_inverse_gives_each_distinct_fid_once_in_first_occurrence_order(values: list[int]) -> None:
    fids = np.array(values, dtype=np.int64)
    unique, inverse = unique_inverse(fids)
    assert unique.tolist() == list(dict.fromkeys(values))
    assert unique[inverse].tolist() == values


def test_a_read_only_array_of_strided_repeated_fids() -> None:
    # Strided fids (multiples of 2^40: equal low bits) given three times, in a read-only array as request tensors are.
    fids = np.array([k << 40 for k in range(1000)] * 3, dtype=np.int64)
    fids.flags.writeable = False
    unique, inverse = unique_inverse(fids)
    assert unique.tolist() == [k << 40 for k in range(1000)]
    assert inverse.tolist() == list(range(1000)) * 3
