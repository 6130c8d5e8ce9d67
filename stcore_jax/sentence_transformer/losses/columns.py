"""Input columns -> embeddings: per-row dropout keys and one forward over all columns (the uncached path).

A trainer batch has one feature dict per input column (``input_ids`` ``[B, T]``, ``attention_mask``, ...),
all with the same ``B`` rows. Row ``i`` of column ``c`` runs with the dropout key
``fold_in(fold_in(dropout_key, c), i)`` (:func:`row_keys`), ``i`` being the GLOBAL row index, so an
example's dropout masks do not depend on how the batch is chunked (GradCache) or sharded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def batch_size(features: dict) -> int:
    """The row count of one column's features (the leading axis of ``input_ids``)."""
    ids = features.get("input_ids")
    if ids is None:
        ids = next(v for v in features.values() if getattr(v, "ndim", 0) >= 1)
    return int(ids.shape[0])


def row_keys(dropout_key, column: int, rows):
    """Per-row dropout keys of one column: ``fold_in(fold_in(dropout_key, column), rows[j])``.

    Args:
      dropout_key: one PRNG key, or ``None`` (returns ``None``: no dropout).
      column: the input column's index.
      rows: ``[n]`` int global row indices.

    Returns:
      ``[n]`` keys (typed keys for a typed ``dropout_key``), or ``None``.
    """
    if dropout_key is None:
        return None
    base = jax.random.fold_in(dropout_key, column)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(rows, jnp.uint32))


def _same_entry(a, b) -> bool:
    """Whether two columns agree on one feature entry so that they can share a forward pass."""
    if a is b:
        return True
    if getattr(a, "ndim", 0) >= 1 or getattr(b, "ndim", 0) >= 1:
        return getattr(a, "shape", None) == getattr(b, "shape", None) and a.dtype == b.dtype
    try:  # scalars (a prompt length, a Router task): equal concrete values only; a tracer is not comparable
        return bool(np.all(np.asarray(a) == np.asarray(b))) if type(a) is type(b) else False
    except Exception:  # noqa: BLE001
        return False


def stackable(features: Sequence[dict], num_shards: int = 1) -> bool:
    """Columns with the same feature keys, array shapes and dtypes and equal non-batched entries
    (all columns of a trainer batch share one length bucket), whose batch splits into ``num_shards``."""
    first = features[0]
    if len(features) < 2 or batch_size(first) % num_shards:
        return False
    return all(f.keys() == first.keys() and all(_same_entry(first[k], f[k]) for k in f) for f in features[1:])


def _interleave(xs, num_shards: int):
    """``C`` arrays ``[B, ...]`` -> ``[C * B, ...]`` laid out shard-major (``[S, C, B / S, ...]``), so a
    batch-sharded input stays on its devices: each shard holds its own rows of every column."""
    b = xs[0].shape[0] // num_shards
    stacked = jnp.stack([x.reshape((num_shards, b) + x.shape[1:]) for x in xs], axis=1)
    return stacked.reshape((len(xs) * num_shards * b,) + xs[0].shape[1:])


def _deinterleave(y, num_columns: int, num_shards: int):
    """Inverse of :func:`_interleave`: ``[C * B, ...]`` -> ``C`` arrays ``[B, ...]``."""
    b = y.shape[0] // (num_columns * num_shards)
    y = y.reshape((num_shards, num_columns, b) + y.shape[1:])
    return [y[:, c].reshape((num_shards * b,) + y.shape[3:]) for c in range(num_columns)]


def embed_columns(forward: Callable, params, features: Sequence[dict], dropout_key=None, *,
                  num_shards: int = 1, packed: dict | None = None, layers: bool = False) -> list:
    """Embed every column (the uncached path): a list of ``[B, D]`` arrays, differentiable w.r.t.
    ``params``, with the per-row dropout keys of :func:`row_keys`.

    Columns of one shape run as a single forward over ``C * B`` rows (measured on an H100, bert-base
    bf16, 2 x 256 rows of 128 tokens: two separate forward+backward passes in one program took 413 ms,
    while one pass over 512 rows took 173 ms; bench/RESULTS.md). Rows are independent and keep their own
    dropout keys, so the embeddings are those of the per-column passes.

    ``packed``: the ``packed_*`` arrays of a sequence-packed batch (sentence_transformer/data.py
    ``collate_packed``), which hold the tokens of every column; the columns then carry ``attention_mask`` and
    ``pack_start`` (and the same keys each), and always run as one forward.

    ``layers``: per-layer embeddings instead, ``[L + 1][C]`` arrays ``[B, D]`` (embedding layer first, the last
    being the sentence embeddings): the forward's ``layer_embeddings`` (``output_hidden_states=True``), from
    the same single pass.
    """
    features = list(features)
    keys = [row_keys(dropout_key, c, jnp.arange(batch_size(f))) for c, f in enumerate(features)]
    if packed is not None and len(features) > 1 and not stackable(features, num_shards):
        raise ValueError("a sequence-packed batch needs columns with the same feature keys and shapes "
                         "(sentence_transformer/data.py collate_packed makes them so)")

    def run(feats, k):
        if not layers:
            return forward(params, feats, dropout_key=k)["sentence_embedding"]
        out = forward(params, feats, dropout_key=k, output_hidden_states=True)
        if "layer_embeddings" not in out:
            raise ValueError("per-layer embeddings were asked for, but the model's forward gave no layer_embeddings "
                             "(its input module is not a Transformer encoder)")
        return list(out["layer_embeddings"])

    if packed is not None or stackable(features, num_shards):
        merged = {k: _interleave([f[k] for f in features], num_shards) if getattr(v, "ndim", 0) >= 1 else v
                  for k, v in features[0].items()}
        merged.update(packed or {})
        merged_keys = None if dropout_key is None else _interleave(keys, num_shards)
        emb = run(merged, merged_keys)
        if layers:
            return [_deinterleave(e, len(features), num_shards) for e in emb]
        return _deinterleave(emb, len(features), num_shards)
    per_column = [run(f, k) for f, k in zip(features, keys)]
    return [list(layer) for layer in zip(*per_column)] if layers else per_column
