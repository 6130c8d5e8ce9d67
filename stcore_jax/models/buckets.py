"""Static shapes for variable-length text: length buckets and fixed-size batches.

XLA compiles once per input shape. Padding every batch to one of a few lengths and to one batch
size bounds the number of compilations by the number of buckets, instead of one per batch.
"""

from __future__ import annotations


def default_buckets(max_seq_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_seq_length``, then ``max_seq_length`` itself."""
    out, b = [], smallest
    while b < max_seq_length:
        out.append(b)
        b *= 2
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
