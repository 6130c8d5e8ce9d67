"""CoSENTLoss and AnglELoss: pairwise ranking of similarity scores by their gold labels.

``loss = log(1 + sum_{(i, j): label_i < label_j} exp(scale * (s_i - s_j)))``: every pair whose
gold order is violated by the predicted scores contributes. Computed in ``O(B log B)``: sort rows
by label, take a reverse cumulative log-sum-exp of ``-s`` and, for each row, add the suffix that
starts after its tie group, so the ``B x B`` pair matrix is never built.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import (
    NEG,
    Loss,
    check_context,
    f32,
    resolve_similarity,
    row_mask,
    sharding_agnostic,
    similarity_fct_name,
)
from stcore_jax.similarity import pairwise_angle_sim, pairwise_cos_sim


def _labels_vector(labels, batch, name):
    labels = jnp.asarray(labels)
    if labels.size != batch:
        raise ValueError(f"{name} expects {batch} labels (one per example), but got {labels.size} labels "
                         f"with shape {tuple(labels.shape)}.")
    labels = labels.reshape(-1)
    return labels.astype(jnp.int32) if labels.dtype == jnp.bool_ else labels


def cosent_from_scores(scores, labels, mask=None):
    """CoSENT on precomputed, already scaled scores ``[N]`` with labels ``[N]``; float32 scalar."""
    scores = f32(scores)
    valid = row_mask(mask, scores.shape[0])
    order = jnp.argsort(labels, stable=True)
    labels, scores, valid = labels[order], scores[order], valid[order]
    # First index holding a strictly larger label than each row (end of its tie group).
    higher_start = jnp.searchsorted(labels, labels, side="right")
    neg = jnp.where(valid, -scores, NEG)
    suffix = jax.lax.cumlogsumexp(neg, axis=0, reverse=True)  # suffix[k] = logsumexp(-s[k:])
    suffix = jnp.concatenate([suffix, jnp.full((1,), NEG, suffix.dtype)])
    terms = jnp.where(valid, scores, NEG) + suffix[higher_start]
    return jax.nn.logsumexp(jnp.concatenate([jnp.zeros((1,), terms.dtype), terms]))


@sharding_agnostic
def cosent_loss(embeddings_a, embeddings_b, labels, *, scale: float = 20.0,
                similarity_fct: Callable | str = pairwise_cos_sim, mask=None, _name="CoSENTLoss"):
    """CoSENTLoss (sentence-transformers 6.2).

    Args:
      embeddings_a, embeddings_b: ``[B, D]`` the two texts of each pair.
      labels: ``[B]`` gold similarity (float, int or bool); only their order matters.
      scale: multiplies the scores (default 20); similarity_fct: pairwise similarity
        (``pairwise_cos_sim`` default).
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar.
    """
    a, b = f32(embeddings_a), f32(embeddings_b)
    labels = _labels_vector(labels, a.shape[0], _name)
    scores = f32(resolve_similarity(similarity_fct, pairwise=True)(a, b)) * scale
    return cosent_from_scores(scores, labels, mask)


@sharding_agnostic
def angle_loss(anchor, other, *more, labels=None, scale: float = 20.0, mask=None):
    """AnglELoss (sentence-transformers 6.2): CoSENT with ``pairwise_angle_sim``.

    Pairs ``(A, B)`` need float ``labels [B]``. For ``(anchor, positive, negative_1..n)`` tuples
    the pairs ``(anchor, positive)`` get ``labels`` (default 1) and every ``(anchor, negative_k)``
    gets ``1 - labels``, and all ``B * (n + 1)`` pairs are ranked together.
    """
    anchor = f32(anchor)
    batch = anchor.shape[0]
    if not more:
        if labels is None:
            raise ValueError("AnglELoss requires labels for datasets with pairs.")
        return cosent_loss(anchor, other, labels, scale=scale, similarity_fct=pairwise_angle_sim, mask=mask,
                           _name="AnglELoss")
    labels = jnp.ones((batch,), jnp.float32) if labels is None else _labels_vector(labels, batch, "AnglELoss")
    candidates = [f32(other)] + [f32(m) for m in more]
    pair_a = jnp.tile(anchor, (len(candidates), 1))
    pair_b = jnp.concatenate(candidates, axis=0)
    pair_labels = jnp.concatenate([labels] + [1 - labels] * len(more))
    pair_mask = None if mask is None else jnp.tile(row_mask(mask, batch), len(candidates))
    scores = pairwise_angle_sim(pair_a, pair_b) * scale
    return cosent_from_scores(scores, pair_labels, pair_mask)


class CoSENTLoss(Loss):
    """Columns ``(text_A, text_B)`` with a float score label. See :func:`cosent_loss`."""

    min_inputs, max_inputs, label = 2, 2, "required"
    inputs_doc = "(text_A, text_B)"
    label_doc = "a float similarity score label"

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable | str = pairwise_cos_sim) -> None:
        super().__init__(model)
        self.scale = scale
        self.similarity_fct = resolve_similarity(similarity_fct, pairwise=True)

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} needs labels.")
        return cosent_loss(embeddings[0], embeddings[1], labels, scale=self.scale,
                           similarity_fct=self.similarity_fct, mask=mask, _name=self.name)

    def get_config_dict(self):
        return {"scale": self.scale, "similarity_fct": similarity_fct_name(self.similarity_fct)}


class AnglELoss(CoSENTLoss):
    """Pairs ``(A, B)`` with a float score label, or ``(anchor, positive, negative_1..n)`` tuples
    with an optional label (default 1 for the positive). See :func:`angle_loss`."""

    min_inputs, max_inputs = 2, None
    inputs_doc = "(text_A, text_B) or (anchor, positive, negative_1, ..., negative_n)"

    def __init__(self, model=None, scale: float = 20.0) -> None:
        super().__init__(model, scale, similarity_fct=pairwise_angle_sim)

    def label_rule(self, num_inputs):
        return "required" if num_inputs == 2 else "optional"

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        return angle_loss(*embeddings, labels=labels, scale=self.scale, mask=mask)
