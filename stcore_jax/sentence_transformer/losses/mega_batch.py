"""MegaBatchMarginLoss: margin loss against the hardest in-batch negative (Wieting & Gimpel 2018)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import NEG, Loss, check_context, f32, masked_mean, row_mask, sharding_agnostic
from stcore_jax.similarity import cos_sim


@sharding_agnostic
def mega_batch_margin_loss(anchor, positive, *, positive_margin: float = 0.8, negative_margin: float = 0.3,
                           mask=None):
    """MegaBatchMarginLoss (sentence-transformers 6.2).

    Args:
      anchor, positive: ``[B, D]`` pairs.
      positive_margin, negative_margin: 0.8 / 0.3.
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar: ``mean_i relu(pm - cos(a_i, p_i)) + relu(max_{j != i} cos(a_i, p_j) - nm)``.
      (The reference's mini-batching only bounds its memory; the value and gradient are these.)
    """
    a, p = f32(anchor), f32(positive)
    batch = a.shape[0]
    valid = row_mask(mask, batch)
    scores = cos_sim(a, p)
    pos = jnp.diagonal(scores)
    others = ~jnp.eye(batch, dtype=bool) & valid[None, :]
    hardest_neg = jnp.max(jnp.where(others, scores, NEG), axis=1)
    return masked_mean(jax.nn.relu(positive_margin - pos) + jax.nn.relu(hardest_neg - negative_margin), mask)


class MegaBatchMarginLoss(Loss):
    """Columns ``(anchor, positive)``, no label. ``use_mini_batched_version``,
    ``mini_batch_size`` and ``mini_batch_num_tokens`` are kept for the trainer (GradCache-style
    chunked embedding); they do not change the loss."""

    min_inputs, max_inputs, label = 2, 2, "none"
    inputs_doc = "(anchor, positive); the hardest negative is mined from the other positives"

    def __init__(self, model=None, positive_margin: float = 0.8, negative_margin: float = 0.3,
                 use_mini_batched_version: bool = True, mini_batch_size: int = 50,
                 mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False) -> None:
        super().__init__(model)
        self.positive_margin = positive_margin
        self.negative_margin = negative_margin
        self.use_mini_batched_version = use_mini_batched_version
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        anchor, positive = embeddings
        return mega_batch_margin_loss(anchor, positive, positive_margin=self.positive_margin,
                                      negative_margin=self.negative_margin, mask=mask)

    def get_config_dict(self):
        return {"positive_margin": self.positive_margin, "negative_margin": self.negative_margin,
                "mini_batch_size": self.mini_batch_size, "mini_batch_num_tokens": self.mini_batch_num_tokens}
