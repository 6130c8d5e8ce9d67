"""Sequence packing: several sentences per encoder row instead of one padded row each.

The reference pads each column of a batch to its longest sentence; on STS-B train (batch 16) about
half of those tokens are padding (bench/padding.py). Packing lays the batch's sentences end to end
in rows of a fixed ``row_length`` (first-fit decreasing), the encoders keep attention inside each
sentence and give every token its position in its own sentence (:class:`layers.Packing`), and the
token embeddings are gathered back to ``[N, row_length, D]`` per sentence, so pooling and every
module after the encoder see exactly what an unpacked forward gives them (to float rounding).

This file holds the device side: :func:`packed_features` (encoder inputs) and :func:`unpack_tokens`; the
host side (placing sentences in rows, the packed arrays of a batch) is stcore_jax/batching/packing.py.

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

from stcore_jax.models.layers import Packing, TokenKeys

PACKED_PREFIX = "packed_"


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
