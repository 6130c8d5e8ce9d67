"""GlobalOrthogonalRegularizationLoss (Zhang et al. 2017): spread embeddings of a column apart."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import (
    Loss,
    check_context,
    f32,
    resolve_similarity,
    row_mask,
    sharding_agnostic,
    similarity_fct_name,
)
from stcore_jax.similarity import cos_sim


def _gor_terms(embeddings, similarity_fct, mask):
    e = f32(embeddings)
    batch, dim = e.shape
    valid = row_mask(mask, batch)
    off_diag = ~jnp.eye(batch, dtype=bool) & valid[:, None] & valid[None, :]
    sims = jnp.where(off_diag, f32(similarity_fct(e, e)), 0.0)
    n = jnp.sum(valid)
    num_off_diagonal = jnp.maximum(n * (n - 1), 1).astype(jnp.float32)
    mean_term = (jnp.sum(sims) / num_off_diagonal) ** 2
    second_moment = jnp.sum(sims ** 2) / num_off_diagonal
    return mean_term, jax.nn.relu(second_moment - 1.0 / dim)


@sharding_agnostic
def global_orthogonal_regularization_loss(*embeddings, similarity_fct: Callable | str = cos_sim,
                                          mean_weight: float | None = 1.0, second_moment_weight: float | None = 1.0,
                                          aggregation: str = "mean", mask=None) -> dict:
    """GlobalOrthogonalRegularizationLoss (sentence-transformers 6.x).

    Args:
      *embeddings: any number of ``[B, D]`` columns; each is regularised on its own.
      similarity_fct: ``cos_sim`` (default).
      mean_weight, second_moment_weight: weights (a falsy weight drops that component).
      aggregation: ``"mean"`` or ``"sum"`` over columns.
      mask: optional ``[B] bool`` of real rows.

    Returns:
      ``{"gor_mean": ..., "gor_second_moment": ...}`` float32 scalars: ``M1^2`` (squared mean
      off-diagonal similarity) and ``relu(M2 - 1/D)`` (second moment above that of uniform
      vectors on the sphere); the trainer sums them for the gradient and logs each.
    """
    sim = resolve_similarity(similarity_fct)
    means, seconds = zip(*[_gor_terms(e, sim, mask) for e in embeddings])
    reduce = jnp.sum if aggregation == "sum" else jnp.mean
    out = {}
    if mean_weight:
        out["gor_mean"] = mean_weight * reduce(jnp.stack(means))
    if second_moment_weight:
        out["gor_second_moment"] = second_moment_weight * reduce(jnp.stack(seconds))
    return out


class GlobalOrthogonalRegularizationLoss(Loss):
    """Any number of text columns; a label, if present, is ignored. Returns a dict of components."""

    min_inputs, max_inputs, label = 1, None, "optional"
    inputs_doc = "(any text columns)"

    def __init__(self, model=None, similarity_fct: Callable | str = cos_sim, mean_weight: float | None = 1.0,
                 second_moment_weight: float | None = 1.0, aggregation: str = "mean") -> None:
        super().__init__(model)
        if not mean_weight and not second_moment_weight:
            raise ValueError("At least one of mean_weight or second_moment_weight must be non-zero")
        if aggregation not in ("mean", "sum"):
            raise ValueError(f"aggregation must be 'mean' or 'sum', got '{aggregation}'")
        self.similarity_fct = resolve_similarity(similarity_fct)
        self.mean_weight = mean_weight
        self.second_moment_weight = second_moment_weight
        self.aggregation = aggregation

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        return global_orthogonal_regularization_loss(
            *embeddings, similarity_fct=self.similarity_fct, mean_weight=self.mean_weight,
            second_moment_weight=self.second_moment_weight, aggregation=self.aggregation, mask=mask)

    def get_config_dict(self):
        return {"similarity_fct": similarity_fct_name(self.similarity_fct), "mean_weight": self.mean_weight,
                "second_moment_weight": self.second_moment_weight, "aggregation": self.aggregation}
