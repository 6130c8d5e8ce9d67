"""The trainer's packed shapes: row length and rows-per-shard buckets, fitted to the epoch plan.

A packed step's arrays are ``[shards, rows, row_length]`` (models/packing.py). ``row_length`` is fixed
for the run; ``rows`` takes a few bucketed values, so the step compiles once per rows bucket it
reaches. Both are pure functions of the seeded plan (like the length buckets), so every host and
every resume agree.
"""

from __future__ import annotations

from stcore_jax.models.buckets import fit_buckets, round_up
from stcore_jax.training.data import pack_plan, packed_rows_needed

ROW_LENGTHS = (64, 128, 256, 512)  # candidate row lengths beside the longest sentence rounded up to 8
SAMPLE_STEPS = 256  # steps of the plan that choose the row length


def relative_cost(row_length: int, hidden_size: int) -> float:
    """Encoder FLOPs per packed token relative to the dense layers alone: attention over a row adds
    ``4 L D`` (scores and values) to the ``24 D^2`` of a BERT layer's projections and MLP."""
    return 1.0 + row_length / (6.0 * hidden_size)


def choose_row_length(steps, longest: int, hidden_size: int, batch_size: int, num_shards: int) -> int:
    """The row length with the least estimated encoder cost over the first ``SAMPLE_STEPS`` ``steps``.

    Args:
      steps: ``[(prepared dataset, [rows of each micro-batch])]`` of the plan.
      longest: the longest training sentence (tokens); rows are at least that long.
    """
    shortest = round_up(max(longest, 1), 8)
    candidates = sorted({shortest} | {n for n in ROW_LENGTHS if n > shortest})
    sample = steps[:SAMPLE_STEPS]

    def cost(length):
        rows = sum(packed_rows_needed(pack_plan(ds, r, batch_size, num_shards, length))
                   for ds, micro in sample for r in micro)
        return rows * length * relative_cost(length, hidden_size)

    return min(candidates, key=cost)


def fit_row_buckets(steps, row_length: int, batch_size: int, num_shards: int, k: int, most: int) -> tuple[int, ...]:
    """``k`` rows-per-shard buckets fitted to what every step of ``steps`` needs (its fullest shard and
    micro-batch), then a quarter more and ``most`` (every sentence alone in a row) for later epochs,
    whose batches differ."""
    needs = [max(packed_rows_needed(pack_plan(ds, r, batch_size, num_shards, row_length)) for r in micro)
             for ds, micro in steps]
    fitted = fit_buckets(needs or [most], k, multiple=1)
    extra = min(fitted[-1] + max(1, fitted[-1] // 4), most)
    return tuple(sorted(set(fitted) | {extra, most}))
