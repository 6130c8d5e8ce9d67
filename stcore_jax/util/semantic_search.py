"""Exact top-k similarity search on device, in fixed-shape chunks.

The score matrix of ``Q`` queries against a corpus of ``C`` documents is never materialised: the
corpus is fed in chunks of ``corpus_chunk_size`` rows and the queries in chunks of
``query_chunk_size`` rows; each step scores one ``[query_chunk, corpus_chunk]`` block, takes its
top-k and merges it into a running ``[query_chunk, k]`` top-k held on device. Chunks are padded to
fixed shapes (the last one masked), so a search compiles one step per ``(query_chunk, corpus_chunk,
D, k, score function)``.

Ordering is deterministic: descending score, ties broken by ascending corpus index
(``jax.lax.top_k`` puts the lower index first, and chunks are merged in corpus order). The
information-retrieval evaluator relies on this to reproduce the reference's ``(-score, corpus_id)``
order by searching the corpus in sorted-id order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax import similarity as _sim

_HIGHEST = jax.lax.Precision.HIGHEST


class Scorer(NamedTuple):
    """A score function split into a per-chunk ``prepare`` and a block ``score: [q, c] -> [Q, C]``."""

    prepare: Callable[[jax.Array], jax.Array]
    score: Callable[[jax.Array, jax.Array], jax.Array]


def _as_f32(x):
    return x.astype(jnp.float32)


def _matmul_t(a, b):
    return jnp.matmul(a, b.T, precision=_HIGHEST)


def _neg_l2(a, b):
    # ||a-b||^2 = |a|^2 + |b|^2 - 2ab: an O(Q*C) block instead of the O(Q*C*D) broadcast
    # (torch.cdist takes the same matmul route for all but tiny inputs).
    sq = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * _matmul_t(a, b)
    return -jnp.sqrt(jnp.maximum(sq, 0.0))


def _neg_l1(a, b):
    # Accumulate one dimension at a time so the block stays [Q, C].
    def body(d, acc):
        return acc + jnp.abs(a[:, d][:, None] - b[:, d][None, :])

    zero = jnp.zeros((a.shape[0], b.shape[0]), jnp.float32)
    return -jax.lax.fori_loop(0, a.shape[1], body, zero)


_COSINE = Scorer(lambda x: _sim.normalize(_as_f32(x)), _matmul_t)
_DOT = Scorer(_as_f32, _matmul_t)
_EUCLIDEAN = Scorer(_as_f32, _neg_l2)
_MANHATTAN = Scorer(_as_f32, _neg_l1)
_BY_NAME = {"cosine": _COSINE, "dot": _DOT, "euclidean": _EUCLIDEAN, "manhattan": _MANHATTAN}
_BY_FUNCTION = {
    _sim.cos_sim: _COSINE,
    _sim.dot_score: _DOT,
    _sim.euclidean_sim: _EUCLIDEAN,
    _sim.manhattan_sim: _MANHATTAN,
}
# Functions of the same names from sentence_transformers.util, so ported scripts keep working.
_REFERENCE_NAMES = {
    "cos_sim": _COSINE,
    "pytorch_cos_sim": _COSINE,
    "dot_score": _DOT,
    "euclidean_sim": _EUCLIDEAN,
    "manhattan_sim": _MANHATTAN,
}


def get_scorer(score_function: Any) -> Scorer:
    """Resolve a score function, a name (``"cosine"``, ``"dot"``, …) or a ``Scorer``.

    The four built-in similarities get memory-friendly block implementations; any other callable
    ``f(a: [Q, D], b: [C, D]) -> [Q, C]`` must be traceable by JAX and is used as is.
    """
    if isinstance(score_function, Scorer):
        return score_function
    if isinstance(score_function, str):  # includes SimilarityFunction
        return _BY_NAME[_sim.SimilarityFunction(score_function).value]
    if score_function in _BY_FUNCTION:
        return _BY_FUNCTION[score_function]
    module = getattr(score_function, "__module__", "") or ""
    if module.startswith("sentence_transformers") and score_function.__name__ in _REFERENCE_NAMES:
        return _REFERENCE_NAMES[score_function.__name__]
    if not callable(score_function):
        raise TypeError(f"score_function must be a callable or a similarity name, got {score_function!r}")
    return Scorer(lambda x: x, score_function)


def _bucket(n: int, cap: int) -> int:
    """Round ``n`` up to one of ~8 sizes per power of two (at most 12.5% padding), capped at ``cap``."""
    if n >= cap:
        return cap
    granule = 1 << max(0, n.bit_length() - 4)
    return min(cap, -(-n // granule) * granule)


@functools.partial(jax.jit, static_argnames=("k", "scorer"), donate_argnums=(0, 1))
def topk_chunk_step(best_scores, best_idx, queries, corpus, offset, n_valid, *, k, scorer):
    """Merge one corpus chunk into a running top-k.

    Args:
      best_scores: ``[Qc, k]`` float32 running top-k scores (``-inf`` where empty).
      best_idx: ``[Qc, k]`` int32 corpus indices of ``best_scores``.
      queries: ``[Qc, D]`` prepared query chunk.
      corpus: ``[Cc, D]`` prepared corpus chunk; rows ``>= n_valid`` are padding.
      offset: index of the chunk's first row in the corpus.
      n_valid: number of real rows in ``corpus``.
      k: number of results kept (``k <= Cc``).
      scorer: the ``Scorer`` whose ``score`` makes the ``[Qc, Cc]`` block.

    Returns:
      The merged ``(best_scores, best_idx)``: descending score, ties by ascending index.
    """
    scores = scorer.score(queries, corpus).astype(jnp.float32)
    valid = jnp.arange(scores.shape[1])[None, :] < n_valid
    scores = jnp.where(valid, scores, -jnp.inf)
    chunk_scores, chunk_idx = jax.lax.top_k(scores, k)
    # Earlier chunks hold lower indices and come first in the concatenation, so top_k's
    # lower-position-first rule keeps the global (-score, index) order across chunks.
    all_scores = jnp.concatenate([best_scores, chunk_scores], axis=1)
    all_idx = jnp.concatenate([best_idx, chunk_idx.astype(jnp.int32) + offset], axis=1)
    merged_scores, pos = jax.lax.top_k(all_scores, k)
    return merged_scores, jnp.take_along_axis(all_idx, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("scorer",))
def _prepare(x, *, scorer):
    return scorer.prepare(x)


def _to_array(x) -> np.ndarray | jax.Array:
    if isinstance(x, jax.Array):
        return x
    if hasattr(x, "detach"):  # torch tensors
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:
            x = x.float()
        return x.numpy()
    if isinstance(x, list) and x and hasattr(x[0], "detach"):
        return np.stack([_to_array(row) for row in x])
    return np.asarray(x)


def _rows(x):
    x = _to_array(x)
    return x[None, :] if x.ndim == 1 else x


def _pad_rows(x, rows: int):
    if x.shape[0] == rows:
        return x
    pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, pad) if isinstance(x, jax.Array) else np.pad(x, pad)


class ChunkedTopK:
    """Running exact top-k of a fixed query set against a corpus fed in chunks.

    ``add(chunk)`` may be called any number of times with consecutive corpus rows (each call is
    split/padded to ``corpus_chunk`` rows); ``result()`` returns host arrays
    ``scores: [Q, k]`` (float32) and ``indices: [Q, k]`` (int64, positions in the order fed).
    Device memory is ``O(Q*D + Q*k + query_chunk*corpus_chunk)``.
    """

    def __init__(
        self,
        query_embeddings,
        k: int,
        *,
        score_function: Any = _sim.cos_sim,
        query_chunk_size: int = 100,
        corpus_chunk_size: int = 500_000,
        corpus_size: int | None = None,
    ):
        queries = _rows(query_embeddings)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.num_queries = queries.shape[0]
        self.scorer = get_scorer(score_function)
        self.query_chunk = _bucket(max(self.num_queries, 1), query_chunk_size)
        expected = corpus_chunk_size if corpus_size is None else min(corpus_size, corpus_chunk_size)
        self.corpus_chunk = max(_bucket(max(expected, 1), corpus_chunk_size), k)
        self.seen = 0
        self._chunks = []
        for start in range(0, self.num_queries, self.query_chunk):
            q = _pad_rows(queries[start : start + self.query_chunk], self.query_chunk)
            q = _prepare(jnp.asarray(q), scorer=self.scorer)
            scores = jnp.full((self.query_chunk, k), -jnp.inf, jnp.float32)
            idx = jnp.full((self.query_chunk, k), -1, jnp.int32)
            self._chunks.append([q, scores, idx])

    def add(self, corpus_embeddings) -> None:
        """Score the next ``len(corpus_embeddings)`` corpus rows against every query."""
        corpus = _rows(corpus_embeddings)
        for start in range(0, corpus.shape[0], self.corpus_chunk):
            block = corpus[start : start + self.corpus_chunk]
            n_valid = block.shape[0]
            block = _prepare(jnp.asarray(_pad_rows(block, self.corpus_chunk)), scorer=self.scorer)
            offset = jnp.int32(self.seen)
            for state in self._chunks:
                state[1], state[2] = topk_chunk_step(
                    state[1], state[2], state[0], block, offset, jnp.int32(n_valid), k=self.k, scorer=self.scorer
                )
            self.seen += n_valid

    def compiled_step(self, dim: int):
        """The compiled per-block step for ``dim``-wide embeddings; its ``memory_analysis()`` is the
        device footprint of one ``[query_chunk, corpus_chunk]`` block, whatever the corpus size."""
        spec = jax.ShapeDtypeStruct
        return topk_chunk_step.lower(
            spec((self.query_chunk, self.k), jnp.float32),
            spec((self.query_chunk, self.k), jnp.int32),
            spec((self.query_chunk, dim), jnp.float32),
            spec((self.corpus_chunk, dim), jnp.float32),
            spec((), jnp.int32),
            spec((), jnp.int32),
            k=self.k,
            scorer=self.scorer,
        ).compile()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        k = min(self.k, self.seen)
        if not self._chunks:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        scores = np.concatenate([np.asarray(s) for _, s, _ in self._chunks])[: self.num_queries, :k]
        idx = np.concatenate([np.asarray(i) for _, _, i in self._chunks])[: self.num_queries, :k]
        return scores, idx.astype(np.int64)


def top_k_search(
    query_embeddings,
    corpus_embeddings,
    top_k: int = 10,
    *,
    score_function: Any = _sim.cos_sim,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500_000,
    corpus_order=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of every query over the corpus, as host arrays.

    Args:
      query_embeddings: ``[Q, D]`` (or ``[D]``) numpy / JAX / torch array.
      corpus_embeddings: ``[C, D]`` array; it stays where it is and is moved one chunk at a time.
      top_k: results per query; clipped to ``C``.
      score_function: a score function or name (see ``get_scorer``).
      query_chunk_size, corpus_chunk_size: block shape ``[query_chunk_size, corpus_chunk_size]``.
      corpus_order: optional permutation of ``range(C)``: the corpus is searched in this order, so
        ties break by position in it; returned indices still refer to ``corpus_embeddings`` rows.

    Returns:
      ``(scores [Q, k] float32, indices [Q, k] int64)`` with ``k = min(top_k, C)``, each row sorted
      by descending score, ties by ascending (ordered) position.
    """
    corpus = _rows(corpus_embeddings)
    n_corpus = corpus.shape[0]
    k = min(top_k, n_corpus)
    queries = _rows(query_embeddings)
    if k == 0:
        return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
    search = ChunkedTopK(
        queries,
        k,
        score_function=score_function,
        query_chunk_size=query_chunk_size,
        corpus_chunk_size=corpus_chunk_size,
        corpus_size=n_corpus,
    )
    order = None if corpus_order is None else np.asarray(corpus_order, dtype=np.int64)
    for start in range(0, n_corpus, search.corpus_chunk):
        if order is None:
            search.add(corpus[start : start + search.corpus_chunk])
        else:
            rows = order[start : start + search.corpus_chunk]
            search.add(jnp.take(corpus, jnp.asarray(rows), axis=0) if isinstance(corpus, jax.Array) else corpus[rows])
    scores, idx = search.result()
    if order is not None:
        idx = order[idx]
    return scores, idx


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function: Callable = _sim.cos_sim,
) -> list[list[dict[str, int | float]]]:
    """Search ``corpus_embeddings`` for each query (``sentence_transformers.util.semantic_search``).

    Args:
      query_embeddings: ``[Q, D]`` or ``[D]`` embeddings (numpy, JAX or torch).
      corpus_embeddings: ``[C, D]`` embeddings.
      query_chunk_size: queries scored per block.
      corpus_chunk_size: corpus rows scored per block (and moved to the device at a time).
      top_k: hits returned per query.
      score_function: ``cos_sim`` (default), ``dot_score``, ``euclidean_sim``, ``manhattan_sim``, a
        name, or any JAX-traceable ``f(a [Q, D], b [C, D]) -> [Q, C]``.

    Returns:
      One list per query of ``{"corpus_id": int, "score": float}``, sorted by decreasing score
      (ties by ascending ``corpus_id``).
    """
    scores, idx = top_k_search(
        query_embeddings,
        corpus_embeddings,
        top_k,
        score_function=score_function,
        query_chunk_size=query_chunk_size,
        corpus_chunk_size=corpus_chunk_size,
    )
    return [
        [{"corpus_id": c, "score": s} for c, s in zip(row_idx, row_scores)]
        for row_idx, row_scores in zip(idx.tolist(), scores.tolist())
    ]


# --- Corpus-sharded search: each corpus block is split across all local devices --------------------------------


@functools.partial(jax.jit, static_argnames=("k", "scorer", "mesh"), donate_argnums=(0, 1))
def sharded_topk_step(best_scores, best_idx, queries, corpus, offset, n_valid, *, k, scorer, mesh):
    """``topk_chunk_step`` with the corpus block's rows split over ``mesh``'s single axis.

    Each device scores its ``[Qc, Cc / n_dev]`` slice and keeps its own top-k; the per-device lists are
    concatenated in device order (= ascending corpus index), so the merge keeps the (-score, index) order.
    Shapes: best_* ``[Qc, k]`` (replicated), queries ``[Qc, D]`` (replicated), corpus ``[Cc, D]`` (row-sharded).
    """
    axis = mesh.axis_names[0]
    rows = corpus.shape[0] // mesh.size
    k_local = min(k, rows)

    def local(q, c, valid_rows):
        first = jax.lax.axis_index(axis) * rows
        scores = scorer.score(q, c).astype(jnp.float32)
        scores = jnp.where((first + jnp.arange(rows))[None, :] < valid_rows, scores, -jnp.inf)
        s, i = jax.lax.top_k(scores, k_local)
        return s, i.astype(jnp.int32) + first

    P = jax.sharding.PartitionSpec
    # [Qc, n_dev * k_local], laid out in device order; the small merge below runs on the gathered lists.
    block_scores, block_idx = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(axis), P()), out_specs=(P(None, axis), P(None, axis))
    )(queries, corpus, n_valid)
    all_scores = jnp.concatenate([best_scores, block_scores], axis=1)
    all_idx = jnp.concatenate([best_idx, block_idx + offset], axis=1)
    merged_scores, pos = jax.lax.top_k(all_scores, k)
    return merged_scores, jnp.take_along_axis(all_idx, pos, axis=1)


def search_mesh() -> jax.sharding.Mesh:
    """A one-axis mesh (``"search"``) over all local devices."""
    return jax.sharding.Mesh(np.array(jax.local_devices()), ("search",))


def sharded_top_k_search(
    query_embeddings,
    corpus_embeddings,
    top_k: int,
    *,
    score_function: Any = _sim.cos_sim,
    query_chunk_size: int = 1024,
    corpus_chunk_size: int = 65536,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``top_k_search`` with every corpus block split over all local devices (or ``mesh``).

    The corpus (host ``[C, D]``) is moved one ``[corpus_chunk, D]`` block at a time, each device receiving
    ``corpus_chunk / n_dev`` rows; device memory is ``O(Q*D + Q*k*n_dev + query_chunk*corpus_chunk/n_dev)``,
    never the ``[Q, C]`` score matrix. Returns ``(scores [Q, k] float32, indices [Q, k] int64)``,
    ``k = min(top_k, C)``, rows sorted by descending score, ties by ascending index.
    """
    mesh = mesh or search_mesh()
    n_dev = mesh.size
    corpus, queries = _rows(corpus_embeddings), _rows(query_embeddings)
    n_corpus, n_queries = corpus.shape[0], queries.shape[0]
    k = min(top_k, n_corpus)
    if k == 0 or n_queries == 0:
        return np.zeros((n_queries, k), np.float32), np.zeros((n_queries, k), np.int64)
    scorer = get_scorer(score_function)
    block = max(_bucket(max(min(n_corpus, corpus_chunk_size), 1), corpus_chunk_size), k)
    block = -(-block // n_dev) * n_dev  # every device gets the same number of rows
    q_chunk = _bucket(n_queries, query_chunk_size)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    by_rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
    states = []
    for start in range(0, n_queries, q_chunk):
        q = jax.device_put(np.asarray(_pad_rows(queries[start : start + q_chunk], q_chunk)), replicated)
        states.append([_prepare(q, scorer=scorer), jax.device_put(np.full((q_chunk, k), -np.inf, np.float32),
                       replicated), jax.device_put(np.full((q_chunk, k), -1, np.int32), replicated)])
    for start in range(0, n_corpus, block):
        rows = corpus[start : start + block]
        n_valid = rows.shape[0]
        rows = _prepare(jax.device_put(np.asarray(_pad_rows(rows, block)), by_rows), scorer=scorer)
        for state in states:
            state[1], state[2] = sharded_topk_step(state[1], state[2], state[0], rows, jnp.int32(start),
                                                   jnp.int32(n_valid), k=k, scorer=scorer, mesh=mesh)
    scores = np.concatenate([np.asarray(s) for _, s, _ in states])[:n_queries]
    idx = np.concatenate([np.asarray(i) for _, _, i in states])[:n_queries]
    return scores, idx.astype(np.int64)
