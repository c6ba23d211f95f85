"""pool_kernels.unique_inverse on the whole int64 range (v2 fids use all 64 bits; the pooling test keeps to 0..20),
and the random hash multiplier that keeps clients from choosing colliding fids."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monolith_serving.core.fid_hash import FIBONACCI, random_multiplier
from monolith_serving.entry.pool_kernels import unique_inverse

INT64 = st.integers(-(2**63), 2**63 - 1)
ODD_INT64 = INT64.map(lambda v: v | 1)
MASK64 = (1 << 64) - 1


def as_int64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(INT64, st.integers(-3, 3)), max_size=200), ODD_INT64)
def test_unique_inverse_gives_each_distinct_fid_once_in_first_occurrence_order(values: list[int], m: int) -> None:
    fids = np.array(values, dtype=np.int64)
    unique, inverse = unique_inverse(fids, m)
    assert unique.tolist() == list(dict.fromkeys(values))
    assert unique[inverse].tolist() == values


def test_a_read_only_array_of_strided_repeated_fids() -> None:
    # Strided fids (multiples of 2^40: equal low bits) given three times, in a read-only array as request tensors are.
    fids = np.array([k << 40 for k in range(1000)] * 3, dtype=np.int64)
    fids.flags.writeable = False
    unique, inverse = unique_inverse(fids, random_multiplier())
    assert unique.tolist() == [k << 40 for k in range(1000)]
    assert inverse.tolist() == list(range(1000)) * 3


def test_fids_chosen_to_collide_under_a_known_multiplier_do_not_under_a_random_one() -> None:
    # k * FIBONACCI^-1 times FIBONACCI is k: with a 4096-slot table (shift 52) all 2000 land in home slot 0.
    inverse_of_fibonacci = pow(FIBONACCI, -1, 1 << 64)
    crafted = [as_int64(k * inverse_of_fibonacci) for k in range(2000)]
    shift = 64 - 12

    def most_sharing_one_home_slot(multiplier: int) -> int:
        homes = Counter(((fid & MASK64) * (multiplier & MASK64) & MASK64) >> shift for fid in crafted)
        return max(homes.values())

    assert most_sharing_one_home_slot(FIBONACCI) == 2000
    # What the attack needs is one long probe chain. Over 3,000 random multipliers the fullest home slot held
    # 2 keys at the median, 17 at the 99.9th percentile and 125 at most; 500 would take a multiplier within
    # ~2^-20 of a fraction with a small denominator. (The count of distinct home slots is no test: an arithmetic
    # progression of keys covers fewer than 1,000 of them for about one multiplier in ten, harmlessly.)
    assert most_sharing_one_home_slot(random_multiplier()) < 500
    # Either way the answer is right; only the probing differs.
    for multiplier in (as_int64(FIBONACCI), random_multiplier()):
        unique, inverse = unique_inverse(np.array(crafted, dtype=np.int64), multiplier)
        assert unique.tolist() == crafted
        assert inverse.tolist() == list(range(2000))


def test_random_multipliers_are_odd_int64_and_differ() -> None:
    drawn = {random_multiplier() for _ in range(64)}
    assert len(drawn) == 64
    assert all(m % 2 == 1 and -(2**63) <= m < 2**63 for m in drawn)
