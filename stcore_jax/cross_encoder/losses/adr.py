"""ADRMSELoss (approximate-rank MSE, Rank-DistiLLM): regress a differentiable rank onto the true rank.

Layout ``"listwise"`` (scores, labels, doc_mask ``[B, max_docs]``); padding as the reference (logits -1e16,
labels 0, both masked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import f32, sharding_agnostic
from stcore_jax.cross_encoder.losses._common import IDENTITY, ListwiseLoss, apply_activation, listwise_masks
from stcore_jax.cross_encoder.losses.lambda_ranking import PAD_LOGIT

Array = jax.Array


@sharding_agnostic
def adr_mse(scores, labels, *, doc_mask=None, mask=None, alpha: float = 1.0, activation_fn=None) -> Array:
    """sum over real docs of (r_i - r^_i)^2 / log2(1 + r_i), divided by the number of real docs.

    r^_i = 1 + sum_{j != i, real} s(alpha (s_j - s_i)); r_i = #{y_j > y_i} + (#{y_j = y_i} + 1) / 2 (ties
    averaged; the count of equals includes i). scores, labels ``[B, N]``; doc_mask ``[B, N]``; mask ``[B]``.
    """
    z = apply_activation(activation_fn, f32(scores))
    m = listwise_masks(z, doc_mask, mask)
    mf = m.astype(jnp.float32)
    logits = jnp.where(m, z, PAD_LOGIT)
    y = jnp.where(m, f32(labels), 0.0)
    y_i, y_j, valid_j = y[:, :, None], y[:, None, :], m[:, None, :]
    greater = jnp.sum((y_j > y_i) & valid_j, axis=-1).astype(jnp.float32)
    equal = jnp.sum((y_j == y_i) & valid_j, axis=-1).astype(jnp.float32)
    true_ranks = greater + (equal + 1.0) / 2.0
    pairwise = jax.nn.sigmoid(alpha * (logits[:, None, :] - logits[:, :, None])) * mf[:, None, :]  # [b, i, j]
    approx_ranks = 1.0 + jnp.sum(pairwise, axis=2) - 0.5 * mf  # minus the self term s(0) = 0.5
    per_doc = (true_ranks - approx_ranks) ** 2 / jnp.log2(true_ranks + 1.0)
    return jnp.sum(per_doc * mf) / jnp.maximum(jnp.sum(mf), 1.0)


class ADRMSELoss(ListwiseLoss):
    """Reference: ``ADRMSELoss(model, alpha=1.0, activation_fn=Identity(), mini_batch_size=None)``."""

    def __init__(self, model=None, alpha: float = 1.0, activation_fn=IDENTITY, mini_batch_size: int | None = None):
        super().__init__(model, activation_fn, mini_batch_size)
        self.alpha = alpha

    def compute_loss_from_scores(self, scores, labels=None, **context):
        return adr_mse(scores, labels, **self._masks(context), alpha=self.alpha, activation_fn=self.activation_fn)

    def get_config_dict(self):
        return {"alpha": self.alpha, "activation_fn": self._activation_name, "mini_batch_size": self.mini_batch_size}
