"""GradCache (Gao et al. 2021, https://arxiv.org/abs/2101.06983) for any family's forward: the chunking and the
``jax.custom_vjp`` whose backward replays one chunk at a time.

A family's cached losses (the bi-encoder's sentence_transformer/losses/gradcache.py, which explains the
method, the chunk layout and the sharding; the CrossEncoder's cached MNRL in cross_encoder/task.py) run
``forward(params, features, dropout_key=keys)[output]`` on ``[N, ...]`` rows in chunks: the forward pass keeps
no activations, and the VJP w.r.t. ``params`` re-runs each chunk with its slice of the output's gradient, so a
step's activation memory is one chunk's. ``output`` is ``"sentence_embedding"`` for embeddings, ``"scores"`` for
a CrossEncoder's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

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


def _embed_chunk(forward, params, chunk, rest, keys, output="sentence_embedding"):
    return forward(params, {**rest, **chunk}, dropout_key=keys)[output]


def _map_chunks(forward, params, chunks, rest, keys, output="sentence_embedding"):
    """Run ``forward`` on ``[n_chunks, rows, ...]`` features chunk by chunk, without keeping activations; its
    ``output`` entry per chunk."""
    return jax.lax.map(lambda xs: _embed_chunk(forward, params, xs[0], rest, xs[1], output), (chunks, keys))


def _gradcache_embed_fn(forward: Callable, shards: int, output: str = "sentence_embedding"):
    """``f(params, chunks, rest, keys) -> [n_chunks, rows, D]`` whose VJP replays chunk by chunk.

    With ``shards > 1`` the replay is vmapped over the chunk's ``shards`` row blocks and the parameter
    gradient is accumulated per block (``[shards, ...]``, one block per device under batch sharding)
    and summed once at the end, so a data-parallel step all-reduces the gradient once per column,
    not once per chunk.
    """

    @jax.custom_vjp
    def embed(params, chunks, rest, keys):
        return _map_chunks(forward, params, chunks, rest, keys, output)

    def fwd(params, chunks, rest, keys):
        return _map_chunks(forward, params, chunks, rest, keys, output), (params, chunks, rest, keys)

    def bwd(res, g_nrd):
        params, chunks, rest, keys = res

        def grad_of_chunk(chunk, k, g_rd):
            _, vjp = jax.vjp(lambda p: _embed_chunk(forward, p, chunk, rest, k, output), params)
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


def cached_forward(forward: Callable, params, features: dict, keys=None, *, output: str, mini_batch_size: int,
                   num_shards: int = 1) -> Array:
    """``forward(params, features, dropout_key=keys)[output]`` for ``[N, ...]`` feature rows, by GradCache.

    ``keys``: ``[N]`` per-row dropout keys (None: no dropout); with per-row keys the values equal one uncached
    forward over all rows with the same keys. The VJP w.r.t. ``params`` replays ``mini_batch_size`` rows at a
    time. Rows in ``num_shards`` contiguous blocks (batch sharding) are chunked block-wise (:func:`to_chunks`).
    Returns ``[N, ...]``.
    """
    n = int(next(v for v in features.values() if getattr(v, "ndim", 0) >= 1).shape[0])
    layout = chunk_layout(n, mini_batch_size, num_shards)
    batched, rest = _split_batched(features, n)
    chunks = {k: to_chunks(jnp.asarray(v), layout) for k, v in batched.items()}
    ck = None if keys is None else to_chunks(keys, layout)
    return from_chunks(_gradcache_embed_fn(forward, num_shards, output)(params, chunks, rest, ck), layout)
