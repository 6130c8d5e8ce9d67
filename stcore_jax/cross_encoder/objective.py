"""A collated CrossEncoder batch -> the model's pair scores -> the loss (what the trainer differentiates).

The batch (cross_encoder/data.py ``collate``) holds ``P`` tokenized pairs per row, ``pairs`` ``[B, P, L]``. They
run as ONE forward over ``B * P`` rows (or, for a loss declaring ``mini_batch_size``, by GradCache in chunks of
that many pairs: base/gradcache.py), each pair with its own dropout key ``fold_in(dropout_key, global pair
index)``, so the cached scores equal the uncached ones and neither depends on the sharding. The logits
``[B, P, num_labels]`` are then arranged as the loss's pair layout declares:

- ``"pairs"``: ``[B]`` (one label) or ``[B, num_labels]``;
- ``"anchor_columns"``: ``[B, n]``;
- ``"mnrl"`` and ``"listwise"``: ``[B, P]`` with ``doc_mask [B, P]`` (and listwise labels ``[B, P]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stcore_jax.base.gradcache import cached_forward

Array = jax.Array


def pair_keys(dropout_key, n: int):
    """``[n]`` per-pair dropout keys ``fold_in(dropout_key, i)`` (None: no dropout)."""
    if dropout_key is None:
        return None
    return jax.vmap(lambda i: jax.random.fold_in(dropout_key, i))(jnp.arange(n, dtype=jnp.uint32))


def pair_scores(forward, params, pairs: dict, dropout_key=None, *, mini_batch_size: int | None = None,
                num_shards: int = 1) -> Array:
    """``pairs`` (``[B, P, L]`` features) -> float32 logits ``[B, P, num_labels]``."""
    b, p, length = pairs["input_ids"].shape
    flat = {k: jnp.reshape(v, (b * p, length)) for k, v in pairs.items()}
    keys = pair_keys(dropout_key, b * p)
    if mini_batch_size:
        scores = cached_forward(forward, params, flat, keys, output="scores", mini_batch_size=mini_batch_size,
                                num_shards=num_shards)
    else:
        scores = forward(params, flat, dropout_key=keys)["scores"]
    return scores.astype(jnp.float32).reshape(b, p, -1)


def arrange(layout: str, scores: Array, batch: dict) -> tuple[Array, object, dict]:
    """``(scores, labels, context)`` for ``loss.compute_loss_from_scores`` from ``[B, P, C]`` logits."""
    labels, context = batch.get("label"), {"mask": batch["mask"]}
    if layout == "pairs":
        return (scores[:, 0, 0] if scores.shape[-1] == 1 else scores[:, 0, :]), labels, context
    if layout == "anchor_columns":
        return scores[..., 0], labels, context
    if layout in ("mnrl", "listwise"):
        return scores[..., 0], labels, {**context, "doc_mask": batch["doc_mask"]}
    raise ValueError(f"unknown pair layout {layout!r}")


def compute_loss(loss, forward, params, batch: dict, dropout_key=None, *, num_shards: int = 1):
    """The loss of one collated batch: a scalar, or a dict of components (summed by the caller)."""
    mini = loss.inputs.mini_batch_size
    scores = pair_scores(forward, params, batch["pairs"], dropout_key, mini_batch_size=mini, num_shards=num_shards)
    scores, labels, context = arrange(loss.inputs.pair_layout, scores, batch)
    return loss.compute_loss_from_scores(scores, labels, **context)
