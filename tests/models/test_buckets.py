"""Length buckets fitted to batch lengths: the dynamic programme against brute force."""

import itertools

import numpy as np
import pytest

from stcore_jax.batching.buckets import bucket_for, fit_buckets, round_up


def _padded(longest, buckets):
    return sum(bucket_for(n, buckets) for n in longest)


@pytest.mark.parametrize("seed", range(6))
def test_fit_buckets_is_optimal(seed):
    rng = np.random.default_rng(seed)
    longest = rng.integers(5, 120, size=int(rng.integers(1, 60))).tolist()
    k = int(rng.integers(1, 5))
    got = fit_buckets(longest, k)
    assert len(got) <= k and list(got) == sorted(set(got))
    assert all(b % 8 == 0 for b in got) and got[-1] >= max(longest)  # every batch fits
    values = sorted({round_up(n, 8) for n in longest})
    best = min(_padded(longest, combo) for r in range(1, k + 1) for combo in itertools.combinations(values, r)
               if combo[-1] == values[-1])
    assert _padded(longest, got) == best


def test_fit_buckets_edges():
    assert fit_buckets([3, 5], 4) == (8,)  # nothing below one multiple
    assert fit_buckets([9, 17, 30], 10) == (16, 24, 32)  # k above the distinct lengths: each its own
    assert fit_buckets([300, 10], 2, cap=256) == (16, 256)  # capped at max_seq_length
    assert fit_buckets([10, 20, 30, 40], 1) == (40,)
    assert fit_buckets([10, 12], 2, multiple=4) == (12,)
    with pytest.raises(ValueError, match="at least one length bucket"):
        fit_buckets([10], 0)
