"""MatryoshkaLoss: apply a loss to truncated, re-normalised prefixes of the embeddings.

For every dimension ``d`` in ``matryoshka_dims`` (sorted descending, weights alongside) the
wrapped loss sees ``normalize(e[..., :d])`` for every column and contributes ``weight * loss``.
Labels that look like embeddings (2-D or 3-D with the full embedding dimension as last axis, e.g.
MSELoss teacher embeddings) are truncated to ``d`` as well; other context (``mask``, ``params``,
``guide_embeddings``, ...) passes through unchanged.

``n_dims_per_step=-1`` (default) uses every dimension, deterministically. With
``0 < n_dims_per_step < len(matryoshka_dims)`` a random subset is used each step: pass a
``jax.random`` key, or explicit ``dim_indices``. Under ``jit`` the sampled indices are traced, so
each of the ``n_dims_per_step`` terms is a ``lax.switch`` over the static truncation sizes: only
the chosen branch runs, and shapes stay static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import Loss, WrapperLoss
from stcore_jax.similarity import normalize


def shrink(embeddings, dim: int):
    """``normalize(embeddings[..., :dim])``."""
    if dim > embeddings.shape[-1]:
        raise ValueError(f"Dimension {dim} in matryoshka_dims cannot be greater than the model's embedding "
                         f"dimension: {embeddings.shape[-1]}")
    return normalize(jnp.asarray(embeddings, jnp.float32)[..., :dim])


def sort_dims(matryoshka_dims: Sequence[int], matryoshka_weights: Sequence[float] | None):
    """Validated ``(dims, weights)``, sorted by dimension, largest first."""
    if not matryoshka_dims:
        raise ValueError("You must provide at least one dimension in matryoshka_dims.")
    if any(d <= 0 for d in matryoshka_dims):
        raise ValueError("All dimensions passed to a matryoshka loss must be > 0.")
    if matryoshka_weights is None:
        matryoshka_weights = [1] * len(matryoshka_dims)
    elif len(matryoshka_weights) != len(matryoshka_dims):
        raise ValueError("matryoshka_weights must be the same length as matryoshka_dims.")
    pairs = sorted(zip(matryoshka_dims, matryoshka_weights), key=lambda x: x[0], reverse=True)
    return tuple(d for d, _ in pairs), tuple(w for _, w in pairs)


def sample_indices(key, population: int, k: int):
    """``k`` distinct indices out of ``range(population)`` (traced int32 ``[k]``)."""
    return jax.random.choice(key, population, (k,), replace=False)


def _truncate_labels(labels, dim, full_dim):
    if not isinstance(labels, (list, tuple)) and getattr(labels, "ndim", 0) in (2, 3) and labels.shape[-1] == full_dim:
        return labels[..., :dim]
    return labels


def matryoshka_loss(loss_fn: Callable, embeddings: Sequence, labels=None, *, matryoshka_dims: Sequence[int],
                    matryoshka_weights: Sequence[float] | None = None, n_dims_per_step: int = -1, key=None,
                    dim_indices: Sequence[int] | None = None, **loss_kwargs):
    """MatryoshkaLoss (Kusupati et al. 2022; sentence-transformers 6.2).

    Args:
      loss_fn: ``(embeddings: list[[B, d]], labels, **loss_kwargs) -> scalar``, e.g. a loss
        instance's ``compute_loss_from_embeddings``.
      embeddings: per-column ``[B, D]`` arrays (full dimension).
      labels: passed to ``loss_fn`` (truncated when they are embeddings of dimension ``D``).
      matryoshka_dims, matryoshka_weights: dimensions (each ``<= D``) and weights (default 1).
      n_dims_per_step: ``-1``/``>= len(dims)``: all; else that many dims per call, chosen by ``key``.
      key: ``jax.random`` key for the random subset.
      dim_indices: explicit indices into the (descending) sorted dims, instead of ``key``.
      **loss_kwargs: forwarded to ``loss_fn`` (mask, params, ...).

    Returns:
      float32 scalar ``sum_d weight_d * loss_fn(shrink(e, d))``.
    """
    dims, weights = sort_dims(matryoshka_dims, matryoshka_weights)
    full_dim = embeddings[0].shape[-1]

    def term(idx):
        dim = dims[idx]
        shrunk = [shrink(e, dim) for e in embeddings]
        return weights[idx] * jnp.asarray(loss_fn(shrunk, _truncate_labels(labels, dim, full_dim), **loss_kwargs),
                                          jnp.float32)

    if dim_indices is not None:
        return sum(term(int(i)) for i in dim_indices)
    if not 0 < n_dims_per_step < len(dims):
        return sum(term(i) for i in range(len(dims)))
    if key is None:
        raise ValueError(f"MatryoshkaLoss(n_dims_per_step={n_dims_per_step}) samples dimensions: pass key=.")
    branches = [lambda i=i: term(i) for i in range(len(dims))]
    chosen = sample_indices(key, len(dims), n_dims_per_step)
    return sum(jax.lax.switch(chosen[j], branches) for j in range(n_dims_per_step))


class MatryoshkaLoss(WrapperLoss):
    """Wraps another loss; takes the same columns and labels. See :func:`matryoshka_loss`.

    ``compute_loss_from_embeddings(embeddings, labels, key=None, dim_indices=None, **context)``:
    ``key`` is needed when ``n_dims_per_step`` selects a random subset (declared: ``inputs.needs_key``).
    The rest of the declaration is the wrapped loss's (a GradCache loss keeps its chunked embedding).
    """

    def __init__(self, model, loss: Loss, matryoshka_dims: Sequence[int],
                 matryoshka_weights: Sequence[float] | None = None, n_dims_per_step: int = -1) -> None:
        super().__init__(model, loss)
        self.matryoshka_dims, self.matryoshka_weights = sort_dims(matryoshka_dims, matryoshka_weights)
        get_dim = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension", None)
        model_dim = get_dim() if callable(get_dim) else None
        if model_dim is not None and any(d > model_dim for d in self.matryoshka_dims):
            raise ValueError(f"Dimensions in matryoshka_dims cannot exceed the model's embedding dimension of "
                             f"{model_dim}.")
        self.n_dims_per_step = n_dims_per_step

    def derive_inputs(self, inner):
        samples = 0 < self.n_dims_per_step < len(self.matryoshka_dims)
        return dataclasses.replace(inner, needs_key=samples or inner.needs_key)

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, key=None, dim_indices=None, **context):
        inner_key = None
        if key is not None and self.loss.needs_key:
            key, inner_key = jax.random.split(key)
        if inner_key is not None:
            context["key"] = inner_key
        return matryoshka_loss(self.loss.compute_loss_from_embeddings, embeddings, labels,
                               matryoshka_dims=self.matryoshka_dims, matryoshka_weights=self.matryoshka_weights,
                               n_dims_per_step=self.n_dims_per_step, key=key, dim_indices=dim_indices, **context)

    def get_config_dict(self):
        return {"loss": self.loss.name, "matryoshka_dims": self.matryoshka_dims,
                "matryoshka_weights": self.matryoshka_weights, "n_dims_per_step": self.n_dims_per_step}
