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
from typing import NamedTuple

import jax
import jax.numpy as jnp

from stcore_jax.sentence_transformer.losses.columns import batch_size, row_keys

Array = jax.Array


# --- chunking --------------------------------------------------------------------------------------
class ChunkLayout(NamedTuple):
    """How ``batch`` rows in ``shards`` contiguous blocks are cut into ``n_chunks`` chunks (static)."""

    batch: int
    shards: int
    rows_per_shard: int  # m: rows each block contributes to a chunk
    n_chunks: int
    pad: int  # rows appended to each block

    @property
    def chunk_rows(self) -> int:
        return self.shards * self.rows_per_shard


def chunk_layout(batch: int, mini_batch_size: int, num_shards: int = 1) -> ChunkLayout:
    if batch % num_shards:
        raise ValueError(f"Batch size {batch} is not divisible by num_shards={num_shards}.")
    per_shard = batch // num_shards
    m = max(1, min(mini_batch_size // num_shards, per_shard))
    n_chunks = -(-per_shard // m)
    return ChunkLayout(batch, num_shards, m, n_chunks, n_chunks * m - per_shard)


def to_chunks(x, layout: ChunkLayout):
    """``[B, ...] -> [n_chunks, S * m, ...]``; chunk ``k`` holds rows ``k*m .. k*m+m-1`` of every block."""
    s, m, n = layout.shards, layout.rows_per_shard, layout.n_chunks
    rest = x.shape[1:]
    x = x.reshape((s, layout.batch // s) + rest)
    if layout.pad:
        x = jnp.pad(x, [(0, 0), (0, layout.pad)] + [(0, 0)] * len(rest), mode="edge")
    x = x.reshape((s, n, m) + rest)
    return jnp.swapaxes(x, 0, 1).reshape((n, s * m) + rest)


def from_chunks(y, layout: ChunkLayout):
    """Inverse of :func:`to_chunks`: ``[n_chunks, S * m, ...] -> [B, ...]`` (padding dropped)."""
    s, m, n = layout.shards, layout.rows_per_shard, layout.n_chunks
    rest = y.shape[2:]
    y = jnp.swapaxes(y.reshape((n, s, m) + rest), 0, 1).reshape((s, n * m) + rest)
    return y[:, : layout.batch // s].reshape((layout.batch,) + rest)


def _split_batched(features: dict, batch: int):
    """Feature entries with a leading batch axis (chunked) and the rest (given to every chunk)."""
    batched = {k: v for k, v in features.items() if getattr(v, "ndim", 0) >= 1 and v.shape[0] == batch}
    rest = {k: v for k, v in features.items() if k not in batched}
    return batched, rest


def _embed_chunk(forward, params, chunk, rest, keys):
    return forward(params, {**rest, **chunk}, dropout_key=keys)["sentence_embedding"]


def _map_chunks(forward, params, chunks, rest, keys):
    """Embed ``[n_chunks, rows, ...]`` features chunk by chunk, without keeping activations."""
    return jax.lax.map(lambda xs: _embed_chunk(forward, params, xs[0], rest, xs[1]), (chunks, keys))


def _gradcache_embed_fn(forward: Callable, shards: int):
    """``f(params, chunks, rest, keys) -> [n_chunks, rows, D]`` whose VJP replays chunk by chunk.

    With ``shards > 1`` the replay is vmapped over the chunk's ``shards`` row blocks and the parameter
    gradient is accumulated per block (``[shards, ...]``, one block per device under batch sharding)
    and summed once at the end, so a data-parallel step all-reduces the gradient once per column,
    not once per chunk.
    """

    @jax.custom_vjp
    def embed(params, chunks, rest, keys):
        return _map_chunks(forward, params, chunks, rest, keys)

    def fwd(params, chunks, rest, keys):
        return _map_chunks(forward, params, chunks, rest, keys), (params, chunks, rest, keys)

    def bwd(res, g_nrd):
        params, chunks, rest, keys = res

        def grad_of_chunk(chunk, k, g_rd):
            _, vjp = jax.vjp(lambda p: _embed_chunk(forward, p, chunk, rest, k), params)
            return vjp(g_rd)[0]

        if shards > 1:
            def blocks(x):
                return x.reshape((shards, x.shape[0] // shards) + x.shape[1:])

            def body(acc, xs):
                g = jax.vmap(grad_of_chunk)(*jax.tree.map(blocks, xs))
                return jax.tree.map(jnp.add, acc, g), None

            zeros = jax.tree.map(lambda p: jnp.zeros((shards,) + p.shape, p.dtype), params)
            grads, _ = jax.lax.scan(body, zeros, (chunks, keys, g_nrd))
            grads = jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)
        else:
            def body(acc, xs):
                return jax.tree.map(jnp.add, acc, grad_of_chunk(*xs)), None

            grads, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (chunks, keys, g_nrd))
        return grads, None, None, None

    embed.defvjp(fwd, bwd)
    return embed


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
