"""ListNetLoss (Cao et al. 2007): cross-entropy between softmax(labels) and softmax(scores) per query.

Layout ``"listwise"`` (scores, labels, doc_mask ``[B, max_docs]``); padding as the reference (logits -1e16,
labels -inf).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import f32, masked_mean, sharding_agnostic
from stcore_jax.cross_encoder.losses._common import IDENTITY, ListwiseLoss, apply_activation, listwise_masks
from stcore_jax.cross_encoder.losses.lambda_ranking import PAD_LOGIT

Array = jax.Array


@sharding_agnostic
def list_net(scores, labels, *, doc_mask=None, mask=None, activation_fn=None) -> Array:
    """mean_q -sum_j softmax(y_q)_j log softmax(s_q)_j.

    scores, labels: ``[B, N]``; doc_mask ``[B, N] bool`` (prefix per row), mask ``[B] bool``. Rows without a real
    document are left out of the mean.
    """
    z = apply_activation(activation_fn, f32(scores))
    m = listwise_masks(z, doc_mask, mask)
    rows = jnp.any(m, axis=-1)
    logits = jnp.where(m, z, PAD_LOGIT)
    # -inf labels in the padding (softmax weight 0); a row with no document gets finite stand-ins (left out).
    y = jnp.where(m, f32(labels), jnp.where(rows[:, None], -jnp.inf, 0.0))
    per_row = -jnp.sum(jax.nn.softmax(y, axis=-1) * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return masked_mean(per_row, rows)


class ListNetLoss(ListwiseLoss):
    """Reference: ``ListNetLoss(model, activation_fn=Identity(), mini_batch_size=None)``."""

    def __init__(self, model=None, activation_fn=IDENTITY, mini_batch_size: int | None = None) -> None:
        super().__init__(model, activation_fn, mini_batch_size)

    def compute_loss_from_scores(self, scores, labels=None, **context):
        return list_net(scores, labels, **self._masks(context), activation_fn=self.activation_fn)

    def get_config_dict(self):
        return {"activation_fn": self._activation_name, "mini_batch_size": self.mini_batch_size}
