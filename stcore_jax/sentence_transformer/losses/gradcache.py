"""GradCache embedding (Gao et al. 2021, https://arxiv.org/abs/2101.06983): the mechanism behind the Cached* losses
(cached.py).

In-batch-negative losses want large batches, but a step's activation memory grows with the batch.
GradCache splits the step so that only one mini-batch's activations are alive at a time:

1. embed every column in chunks of ``mini_batch_size`` rows, keeping no activations;
2. compute the loss on the full ``[B, D]`` embedding matrices and its gradient w.r.t. them;
3. re-embed chunk by chunk, with the same dropout masks, and pull each chunk's slice of that gradient
   back into the parameters (one ``jax.vjp`` per chunk, accumulated in a ``lax.scan``).

Here steps 1 and 3 are the forward and backward rules of one ``jax.custom_vjp`` function,
:func:`cached_embed_columns`, and step 2 is plain autodiff through the loss. So ``jax.grad`` of
``loss.compute_loss(...)`` is the GradCache gradient with no surrogate term; each chunk runs the
encoder forward twice and backward once (the reference's cost), and the loss may be any function of
the embeddings (dicts, the loss's own parameters, guide embeddings).

Interface: the losses declare ``inputs.mini_batch_size`` (:class:`stcore_jax.base.loss.LossInputs`), and
:func:`stcore_jax.sentence_transformer.losses.embed.compute_loss` (which ``loss.compute_loss(forward, params,
features, labels, **keywords)`` calls) embeds with :func:`cached_embed_columns`; the keywords are documented
in :mod:`stcore_jax.sentence_transformer.losses.embed`. ``dropout_key`` is one PRNG key; row
``i`` of column ``c`` runs with ``fold_in(fold_in(dropout_key, c), i)`` for its global index ``i``, in
both the embedding pass and the replay, so the cached loss equals the uncached one (same masks).

Chunk layout and sharding. A batch sharded over ``num_shards`` data-parallel devices is laid out as
``num_shards`` contiguous blocks of ``B / num_shards`` rows. Each chunk takes
``m = max(1, mini_batch_size // num_shards)`` consecutive rows FROM EVERY BLOCK
(``[B] -> [S, B/S] -> [S, n_chunks, m] -> [n_chunks, S * m]``), so every device embeds its own
``m`` rows of every chunk and no features move between devices. A chunk has ``num_shards * m`` rows
(``mini_batch_size`` when it divides evenly). When ``m`` does not divide ``B / num_shards`` each block
is padded at its end by repeating its last row (a real example, so its forward pass stays finite);
the padded rows are dropped before the loss and receive zero gradient. In the replay the parameter
gradient is accumulated per block (``[num_shards, ...]``, one block per device, found by XLA's sharding
propagation) and summed after the chunk loop: a data-parallel step all-reduces the gradient once, not
once per chunk. (Run with ``num_shards > 1`` on ONE device, as the tests do, that accumulator holds
``num_shards`` copies of the parameters.) The batch is expected sharded with automatic axes (a
``Mesh``/``NamedSharding`` batch, as the trainer places it); the chunking reshapes also keep an
``Explicit`` sharding, but the encoders do not run under one yet.

What stays whole: the ``[B, D]`` embeddings and the loss's logits (``[B, (1 + n) * B]`` float32, 8 MiB
at B = 1,024 with one hard negative), which the reference also computes in row chunks; at batch sizes
where that matters, use ``gather_across_devices=False`` or more shards. ``mini_batch_num_tokens`` (packing
chunks by token count) needs dynamic shapes; it is accepted and validated for signature compatibility, and chunks are by
``mini_batch_size``. ``show_progress_bar`` is accepted and ignored (the chunks run inside one
compiled step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from stcore_jax.base.gradcache import (  # noqa: F401 (ChunkLayout, to_chunks, from_chunks: re-exported here)
    ChunkLayout,
    _gradcache_embed_fn,
    _map_chunks,
    _split_batched,
    chunk_layout,
    from_chunks,
    to_chunks,
)
from stcore_jax.sentence_transformer.losses.columns import batch_size, row_keys

Array = jax.Array


def cached_embed_columns(forward: Callable, params, features: Sequence[dict], dropout_key=None, *,
                         mini_batch_size: int = 32, num_shards: int = 1) -> list[Array]:
    """GradCache version of :func:`stcore_jax.sentence_transformer.losses.embed.embed_columns`.

    Same values (same per-row dropout keys); the VJP w.r.t. ``params`` re-embeds one chunk at a time,
    so a step's activation memory is that of ``mini_batch_size`` rows. Returns ``[B, D]`` per column.
    """
    embed = _gradcache_embed_fn(forward, num_shards)
    out = []
    for c, feats in enumerate(features):
        b = batch_size(feats)
        layout = chunk_layout(b, mini_batch_size, num_shards)
        batched, rest = _split_batched(feats, b)
        chunks = {k: to_chunks(jnp.asarray(v), layout) for k, v in batched.items()}
        rows = to_chunks(jnp.arange(b), layout)
        keys = None if dropout_key is None else row_keys(dropout_key, c, rows.reshape(-1)).reshape(rows.shape)
        out.append(from_chunks(embed(params, chunks, rest, keys), layout))
    return out


def chunked_embed_columns(forward: Callable, params, features: Sequence[dict], *, mini_batch_size: int = 32,
                          num_shards: int = 1) -> list[Array]:
    """Deterministic, gradient-free embeddings in chunks (the guide model's pass)."""
    params = jax.lax.stop_gradient(params)
    out = []
    for feats in features:
        b = batch_size(feats)
        layout = chunk_layout(b, mini_batch_size, num_shards)
        batched, rest = _split_batched(feats, b)
        chunks = {k: to_chunks(jnp.asarray(v), layout) for k, v in batched.items()}
        out.append(jax.lax.stop_gradient(from_chunks(_map_chunks(forward, params, chunks, rest, None), layout)))
    return out
