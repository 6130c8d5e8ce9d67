"""Sequence packing on the host: placing sentences in rows, a batch's packing plan, and the trainer's packed
shapes (row length and rows-per-shard buckets, fitted to the epoch plan).

A packed step's arrays are ``[shards, rows, row_length]`` (models/packing.py). ``row_length`` is fixed
for the run; ``rows`` takes a few bucketed values, so the step compiles once per rows bucket it
reaches. Both are pure functions of the seeded plan (like the length buckets), so every host and
every resume agree.
"""

from __future__ import annotations

import numpy as np

from stcore_jax.batching.buckets import fit_buckets, round_up

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


# --- host-side packing: first-fit decreasing placement and one shard's packed arrays ---------------------
def first_fit_decreasing(lengths, row_length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Place sequences of ``lengths`` into rows of ``row_length`` tokens, longest first, each into the
    first row with room. Deterministic (ties keep input order).

    Returns ``(row [n], offset [n], rows_used)``. Zero-length sequences take no room (row 0, offset 0).
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > row_length:
        raise ValueError(f"a sequence of {int(lengths.max())} tokens does not fit a packed row of {row_length}")
    row = np.zeros(lengths.shape, np.int32)
    offset = np.zeros(lengths.shape, np.int32)
    used: list[int] = []
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        if n == 0:
            continue
        r = next((j for j, u in enumerate(used) if u + n <= row_length), len(used))
        if r == len(used):
            used.append(0)
        row[i], offset[i] = r, used[r]
        used[r] += n
    return row, offset, len(used)


def pack_shard(sequences: list[dict], row_length: int, rows: int, pad_id: int,
               token_types: bool | None = None, placement=None) -> dict[str, np.ndarray]:
    """One shard's sentences -> its packed arrays.

    Args:
      sequences: per sentence ``{"input_ids": [...], "token_type_ids": [...]?}`` (empty for padding rows).
      row_length, rows: the packed shape ``[rows, row_length]`` (``rows`` >= what the packing needs).
      pad_id: the tokenizer's padding id.
      token_types: whether to return ``packed_token_type_ids`` (default: if any sentence has them); give it
        when shards must agree on their keys (a shard of padding rows has no sentence to tell).
      placement: ``first_fit_decreasing``'s result for these sequences, if already computed.
    Returns ``{"packed_input_ids", "packed_position_ids", "packed_segment_ids", ["packed_token_type_ids"]}``
    each ``[rows, row_length]``, plus ``"pack_start"`` ``[n]`` and ``"attention_mask"`` ``[n, row_length]``.
    """
    lengths = [len(s.get("input_ids", ())) for s in sequences]
    row, offset, used = placement if placement is not None else first_fit_decreasing(lengths, row_length)
    if used > rows:
        raise ValueError(f"the batch needs {used} packed rows of {row_length} tokens, but the shape has {rows}")
    ids = np.full((rows, row_length), pad_id, np.int32)
    pos = np.zeros((rows, row_length), np.int32)
    seg = np.zeros((rows, row_length), np.int32)
    with_types = any("token_type_ids" in s for s in sequences) if token_types is None else token_types
    types = np.zeros((rows, row_length), np.int32) if with_types else None
    mask = np.zeros((len(sequences), row_length), np.int32)
    start = np.zeros((len(sequences),), np.int32)
    for j, (s, n, r, o) in enumerate(zip(sequences, lengths, row, offset)):
        start[j] = r * row_length + o
        if not n:
            continue
        ids[r, o:o + n] = s["input_ids"]
        pos[r, o:o + n] = np.arange(n)
        seg[r, o:o + n] = j + 1
        mask[j, :n] = 1
        if with_types and "token_type_ids" in s:
            types[r, o:o + n] = s["token_type_ids"]
    out = {"packed_input_ids": ids, "packed_position_ids": pos, "packed_segment_ids": seg,
           "pack_start": start, "attention_mask": mask}
    if with_types:
        out["packed_token_type_ids"] = types
    return out


# --- packing plans of a batch (``ds``: a prepared dataset with ``token_ids`` per column) ---------------
def shard_sequences(ds, rows, shard: int, per_shard: int) -> list[dict]:
    """The sentences of one data shard, column-major (``[C, per_shard]``; padding slots are empty)."""
    slots = range(shard * per_shard, (shard + 1) * per_shard)
    return [{k: v[rows[i]] for k, v in ids.items()} if i < len(rows) else {}
            for ids in ds.token_ids for i in slots]


def pack_plan(ds, rows, batch_size: int, num_shards: int, row_length: int) -> list[tuple]:
    """Per data shard of a batch: ``(its sentences, first_fit_decreasing placement)``. Every shard's, also
    on a process that feeds only some: all must agree on the packed shape."""
    per = batch_size // num_shards
    plan = []
    for s in range(num_shards):
        seqs = shard_sequences(ds, rows, s, per)
        plan.append((seqs, first_fit_decreasing([len(q.get("input_ids", ())) for q in seqs], row_length)))
    return plan


def packed_rows_needed(plan) -> int:
    """Packed rows that the fullest shard of a :func:`pack_plan` needs."""
    return max(placement[2] for _, placement in plan)
