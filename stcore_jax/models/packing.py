"""Sequence packing: several sentences per encoder row instead of one padded row each.

The reference pads each column of a batch to its longest sentence; on STS-B train (batch 16) about
half of those tokens are padding (bench/padding.py). Packing lays the batch's sentences end to end
in rows of a fixed ``row_length`` (first-fit decreasing), the encoders keep attention inside each
sentence and give every token its position in its own sentence (:class:`layers.Packing`), and the
token embeddings are gathered back to ``[N, row_length, D]`` per sentence, so pooling and every
module after the encoder see exactly what an unpacked forward gives them (to float rounding).

Host side (numpy): :func:`first_fit_decreasing` and :func:`pack_shard`. Device side:
:func:`packed_features` (encoder inputs) and :func:`unpack_tokens`.

Feature keys of a packed forward (``S`` data shards, ``R`` rows per shard, ``L`` = ``row_length``,
``N`` sentences, ordered shard-major ``[S, N / S]``):
  ``packed_input_ids``, ``packed_position_ids``, ``packed_segment_ids`` (and ``packed_token_type_ids``
  when the tokenizer makes them): ``[S, R, L]`` int32. Segment ``j + 1`` is the shard's ``j``-th
  sentence; 0 is padding.
  ``pack_start`` ``[N]`` int32: where sentence ``n`` starts among its shard's ``R * L`` tokens.
  ``attention_mask`` ``[N, L]``: 1 for the sentence's tokens (left-aligned), as an unpacked batch.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stcore_jax.models.layers import Packing, TokenKeys

PACKED_PREFIX = "packed_"


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


def is_packed(features: dict) -> bool:
    return "packed_input_ids" in features


def packed_features(features: dict, dropout_key=None):
    """Encoder inputs of a packed forward: ``(input_ids [S*R, L], token_type_ids or None, packing, key)``,
    where ``key`` is ``None`` or :class:`TokenKeys` built from ``dropout_key`` (one key per sentence, [N])."""
    ids = features["packed_input_ids"]
    s, r, length = ids.shape
    flat = lambda a: a.reshape(s * r, length)  # noqa: E731
    seg = flat(features["packed_segment_ids"])
    pos = flat(features["packed_position_ids"])
    types = features.get("packed_token_type_ids")
    key = None
    if dropout_key is not None:
        sequence = jnp.maximum(features["packed_segment_ids"].reshape(s, r * length) - 1, 0)
        key = TokenKeys(dropout_key, sequence, pos)
    return flat(ids), None if types is None else flat(types), Packing(seg, pos), key


def unpack_tokens(hidden, shards: int, features: dict):
    """Packed hidden states ``[S * R, L, D]`` -> per sentence ``[N, L, D]`` (row ``n`` holds sentence
    ``n``'s tokens from position 0; positions past its length repeat its last token and are masked by
    ``attention_mask``). A gather within each of the ``S`` shards, so it stays local under data parallelism."""
    s = shards
    rows, length = hidden.shape[0] // s, hidden.shape[1]
    start = features["pack_start"]
    n = start.shape[0]
    last = jnp.maximum(jnp.sum(features["attention_mask"], axis=1).astype(jnp.int32) - 1, 0)
    idx = start[:, None] + jnp.minimum(jnp.arange(length, dtype=jnp.int32)[None, :], last[:, None])  # [N, L]
    d = hidden.shape[-1]
    out = jnp.take_along_axis(hidden.reshape(s, rows * length, d), idx.reshape(s, (n // s) * length, 1), axis=1)
    return out.reshape(n, length, d)
