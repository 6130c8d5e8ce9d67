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


def bucket_for(length: int, buckets) -> int:
    """Smallest bucket >= ``length`` (the largest if none; inputs are truncated to it anyway)."""
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
