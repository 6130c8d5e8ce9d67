"""ContrastiveTensionLossInBatchNegatives (Carlsson et al. 2021) with a learnable logit scale."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import (
    NEG,
    Loss,
    LossInputs,
    check_context,
    f32,
    resolve_similarity,
    row_mask,
    sharding_agnostic,
    similarity_fct_name,
)
from stcore_jax.similarity import cos_sim


@sharding_agnostic
def contrastive_tension_in_batch_negatives_loss(params, embeddings_1, embeddings_2, *,
                                                similarity_fct: Callable | str = cos_sim, mask=None):
    """ContrastiveTensionLossInBatchNegatives (sentence-transformers 6.2).

    Args:
      params: ``{"logit_scale": scalar}`` (``log(scale)``, trainable).
      embeddings_1: ``[B, D]`` the text column embedded by the *copy* of the encoder (``model1``);
      embeddings_2: ``[B, D]`` the same texts embedded by the model being trained (``model2``).
      similarity_fct: matrix similarity (``cos_sim``).
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar: mean of the row-wise and column-wise cross-entropy of ``exp(logit_scale) * S``
      with targets on the diagonal.
    """
    sim = resolve_similarity(similarity_fct)
    e1, e2 = f32(embeddings_1), f32(embeddings_2)
    batch = e1.shape[0]
    valid = row_mask(mask, batch)
    scores = f32(sim(e1, e2)) * jnp.exp(f32(params["logit_scale"]))
    pair_ok = valid[:, None] & valid[None, :]
    scores = jnp.where(pair_ok, scores, NEG)
    diag = jnp.diagonal(scores)
    rows = jax.nn.logsumexp(scores, axis=1) - diag
    cols = jax.nn.logsumexp(scores, axis=0) - diag
    n = jnp.maximum(jnp.sum(valid), 1)
    return (jnp.sum(jnp.where(valid, rows, 0.0)) / n + jnp.sum(jnp.where(valid, cols, 0.0)) / n) / 2


class ContrastiveTensionLossInBatchNegatives(Loss):
    """One text column, no label. The reference encodes that column twice, with an independent copy
    of the encoder (``model1``, also trained) and with the model itself (``model2``), so
    ``compute_loss_from_embeddings`` takes ``[embeddings_by_model1, embeddings_by_model2]``.
    Owns the trainable ``logit_scale`` (:meth:`init_params`, ``log(scale)``)."""

    min_inputs, max_inputs, label = 1, 1, "none"
    inputs_doc = "(one text column; it is embedded by both encoders)"
    inputs = LossInputs(owns_params=True)

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable | str = cos_sim) -> None:
        super().__init__(model)
        self.scale = scale
        self.similarity_fct = resolve_similarity(similarity_fct)

    def init_params(self, rng):
        return {"logit_scale": jnp.asarray(math.log(self.scale), jnp.float32)}

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, params=None, mask=None, **context):
        check_context(self.name, context)
        if len(embeddings) != 2:
            raise ValueError(f"{self.name}.compute_loss_from_embeddings expects [embeddings from model1, "
                             f"embeddings from model2] of the one text column, got {len(embeddings)} arrays.")
        if params is None:
            params = self.init_params(None)
        return contrastive_tension_in_batch_negatives_loss(params, embeddings[0], embeddings[1],
                                                           similarity_fct=self.similarity_fct, mask=mask)

    def get_config_dict(self):
        return {"scale": self.scale, "similarity_fct": similarity_fct_name(self.similarity_fct)}
