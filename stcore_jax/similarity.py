"""Similarity functions (sentence-transformers ``util`` score functions) as pure JAX.

All functions take embedding matrices ``a: [N, D]`` and ``b: [M, D]`` (1-D inputs are
promoted to one row) and return float32 scores. The full-matrix versions return
``[N, M]``; the ``pairwise_*`` versions require ``N == M`` and return ``[N]``.
"""

from __future__ import annotations

import enum

import jax.numpy as jnp

_EPS = 1e-12  # torch.nn.functional.normalize's default eps


def _rows(x):
    x = jnp.asarray(x)
    return x[None, :] if x.ndim == 1 else x


def _safe_sqrt(sq):
    """``sqrt(sq)`` whose gradient at 0 is 0 instead of inf: an exactly zero norm or distance (a padded
    batch row, an empty text, a row against itself) would otherwise turn 0 * inf into NaN gradients
    and poison the whole step; torch's norms and distances have finite gradients there."""
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def normalize(x, axis=-1):
    """L2-normalise along ``axis`` exactly as ``torch.nn.functional.normalize`` (eps=1e-12)."""
    x = jnp.asarray(x)
    norm = _safe_sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True))
    return (x / jnp.maximum(norm, _EPS)).astype(x.dtype)


def cos_sim(a, b):
    """Cosine similarity matrix ``[N, M]``."""
    a, b = _rows(a).astype(jnp.float32), _rows(b).astype(jnp.float32)
    return normalize(a) @ normalize(b).T


def dot_score(a, b):
    """Dot-product matrix ``[N, M]``."""
    a, b = _rows(a).astype(jnp.float32), _rows(b).astype(jnp.float32)
    return a @ b.T


def euclidean_sim(a, b):
    """Negative L2 distance matrix ``[N, M]`` (``-torch.cdist(a, b, p=2)``)."""
    a, b = _rows(a).astype(jnp.float32), _rows(b).astype(jnp.float32)
    diff = a[:, None, :] - b[None, :, :]
    return -_safe_sqrt(jnp.sum(diff * diff, axis=-1))


def manhattan_sim(a, b):
    """Negative L1 distance matrix ``[N, M]`` (``-torch.cdist(a, b, p=1)``)."""
    a, b = _rows(a).astype(jnp.float32), _rows(b).astype(jnp.float32)
    return -jnp.sum(jnp.abs(a[:, None, :] - b[None, :, :]), axis=-1)


def pairwise_cos_sim(a, b):
    """Row-wise cosine similarity ``[N]``."""
    a, b = _rows(a).astype(jnp.float32), _rows(b).astype(jnp.float32)
    return jnp.sum(normalize(a) * normalize(b), axis=-1)


def pairwise_dot_score(a, b):
    """Row-wise dot product ``[N]``."""
    a, b = _rows(a).astype(jnp.float32), _rows(b).astype(jnp.float32)
    return jnp.sum(a * b, axis=-1)


def pairwise_euclidean_sim(a, b):
    """Row-wise negative L2 distance ``[N]``."""
    a, b = _rows(a).astype(jnp.float32), _rows(b).astype(jnp.float32)
    return -_safe_sqrt(jnp.sum((a - b) ** 2, axis=-1))


def pairwise_manhattan_sim(a, b):
    """Row-wise negative L1 distance ``[N]``."""
    a, b = _rows(a).astype(jnp.float32), _rows(b).astype(jnp.float32)
    return -jnp.sum(jnp.abs(a - b), axis=-1)


def pairwise_angle_sim(x, y):
    """Absolute AnglE similarity ``|cos(x, y) + sin(x, y)|`` after L2 normalisation, ``[N]``.

    Dimension ``i`` pairs with ``i + D/2`` for the sine term; an odd ``D`` is zero-padded by one
    (sentence-transformers 6.x ``pairwise_angle_sim``, used by ``AnglELoss``).
    """
    x, y = _rows(x).astype(jnp.float32), _rows(y).astype(jnp.float32)
    if x.shape[1] % 2:
        x = jnp.pad(x, ((0, 0), (0, 1)))
        y = jnp.pad(y, ((0, 0), (0, 1)))
    x, y = normalize(x), normalize(y)
    cosines = jnp.sum(x * y, axis=1)
    x_re, x_im = jnp.split(x, 2, axis=1)
    y_re, y_im = jnp.split(y, 2, axis=1)
    sines = jnp.sum(x_im * y_re - x_re * y_im, axis=1)
    return jnp.abs(cosines + sines)


class SimilarityFunction(str, enum.Enum):
    """Names of the similarity functions, as in sentence-transformers."""

    COSINE = "cosine"
    DOT_PRODUCT = "dot"
    DOT = "dot"
    EUCLIDEAN = "euclidean"
    MANHATTAN = "manhattan"

    @staticmethod
    def to_similarity_fn(name):
        return _MATRIX[SimilarityFunction(name).value]

    @staticmethod
    def to_similarity_pairwise_fn(name):
        return _PAIRWISE[SimilarityFunction(name).value]

    @staticmethod
    def possible_values():
        return ["cosine", "dot", "euclidean", "manhattan"]


_MATRIX = {"cosine": cos_sim, "dot": dot_score, "euclidean": euclidean_sim, "manhattan": manhattan_sim}
_PAIRWISE = {
    "cosine": pairwise_cos_sim,
    "dot": pairwise_dot_score,
    "euclidean": pairwise_euclidean_sim,
    "manhattan": pairwise_manhattan_sim,
}
