"""Static shapes for variable-length text: length buckets and fixed-size batches.

XLA compiles once per input shape. Padding every batch to one of a few lengths and to one batch
size bounds the number of compilations by the number of buckets, instead of one per batch.

Compute grows linearly with the padded length, so the default buckets are spaced geometrically,
four per octave (8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, ...): a batch
is padded by less than a quarter of its longest row (plus at most 3 tokens below 16), where powers
of two could nearly double it. Only the buckets a workload reaches are compiled. Measured on
all-MiniLM-L6-v2 over STS-B test (bench/RESULTS.md): 44k padded tokens instead of 59k with powers
of two from 16 (39k real), 9 compilations instead of 3, and a shorter first call all the same.
"""

from __future__ import annotations

from collections import Counter


def default_buckets(max_seq_length: int, smallest: int = 8, per_octave: int = 4, min_step: int = 4) -> tuple[int, ...]:
    """Padding lengths up to ``max_seq_length`` (always the last bucket).

    From ``smallest``, each octave ``[o, 2o)`` is cut into steps of ``max(o // per_octave, min_step)``.
    """
    out, octave = [], smallest
    while octave < max_seq_length:
        step = max(octave // per_octave, min_step)
        out += [b for b in range(octave, 2 * octave, step) if b < max_seq_length]
        octave *= 2
    out.append(max_seq_length)
    return tuple(out)


def covering(buckets, max_seq_length: int) -> tuple[int, ...]:
    """``buckets`` with ``max_seq_length`` appended when they end below it, so that every (truncated) row
    fits the last bucket: given buckets that stop short would otherwise meet a longer row unpadded."""
    buckets = tuple(buckets)
    return buckets + ((max_seq_length,) if max(buckets) < max_seq_length else ())


def bucket_for(length: int, buckets) -> int:
    """Smallest bucket >= ``length`` (the largest if none; inputs are truncated to it anyway)."""
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def fit_buckets(longest, k: int, multiple: int = 8, cap: int | None = None) -> tuple[int, ...]:
    """At most ``k`` padding lengths that minimise the total padded length of batches whose longest rows
    are ``longest`` (one entry per batch). Candidates are multiples of ``multiple`` (capped at ``cap``);
    the last bucket fits the longest batch. Exact dynamic programme over the distinct rounded lengths:
    ``O(n^2 k)`` for ``n`` distinct values (at most ``cap / multiple``).

    The trainer fits its buckets to the batches its sampler will draw, so a handful of compilations pad
    little more than padding to each batch's longest row would (bench/RESULTS.md).
    """
    if k < 1:
        raise ValueError(f"need at least one length bucket, got k={k}")
    rounded = [max(round_up(max(int(n), 1), multiple), multiple) for n in longest]
    if cap is not None:
        rounded = [min(r, cap) for r in rounded]
    if not rounded:
        raise ValueError("fit_buckets needs at least one batch length")
    tally = Counter(rounded)
    values = sorted(tally)
    counts = [tally[v] for v in values]
    n = len(values)
    k = min(k, n)
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # cost[j][i]: least padded length of the batches with the i smallest values, using j buckets, the
    # largest of them values[i-1]; back[j][i]: where that last bucket's group starts.
    cost = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            for s in range(i):
                c = cost[j - 1][s] + values[i - 1] * (prefix[i] - prefix[s])
                if c < cost[j][i]:
                    cost[j][i], back[j][i] = c, s
    out, i, j = [], n, k  # k <= n distinct values: using all k buckets is never worse
    while i > 0:
        out.append(values[i - 1])
        i, j = back[j][i], j - 1
    return tuple(sorted(out))
