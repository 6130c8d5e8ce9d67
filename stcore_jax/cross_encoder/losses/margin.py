"""MarginMSELoss: regress the student's margin z(q, pos) - z(q, neg_j) onto the teacher's.

Layout ``"anchor_columns"``: columns (query, positive, negative_1..negative_n), pairs (q_i, c_i) for every
column; scores ``[B, n + 1]`` (column 0 the positive's logit, column j the j-th negative's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import f32, row_mask
from stcore_jax.cross_encoder.losses._common import (
    IDENTITY,
    CrossEncoderLoss,
    apply_activation,
    check_context,
    check_reduction,
    reduce_rows,
    resolve_activation,
)

Array = jax.Array


def margin_labels(labels, batch_size: int, num_negatives: int) -> Array:
    """The reference's label rules: ``[B, n]`` margins as given; ``[B]`` when n = 1; ``[B, n + 1]`` raw teacher
    scores become ``y_0 - y_j``; a list of per-row arrays is stacked first. Returns ``[B, n]``."""
    if isinstance(labels, (list, tuple)):
        labels = jnp.stack([f32(x) for x in labels])
    labels = f32(labels)
    if labels.shape == (batch_size, num_negatives + 1):
        labels = labels[:, :1] - labels[:, 1:]
    if labels.shape == (batch_size,):
        labels = labels[:, None]
    if labels.shape != (batch_size, num_negatives):
        raise ValueError(f"Labels shape {labels.shape} does not match expected shape {(batch_size, num_negatives)}. "
                         f"Ensure that your dataset labels/scores are 1) lists of differences between positive "
                         f"scores and negatives scores (length `num_negatives`), or 2) lists of positive and "
                         f"negative scores (length `num_negatives + 1`).")
    return labels


def margin_mse(scores, labels, *, activation_fn=None, mask=None, reduction: str = "mean") -> Array:
    """mean over B x n of ((a(z_qp) - a(z_qn_j)) - y_j)^2.

    Args:
      scores: ``[B, n + 1]`` logits, positive first. labels: see :func:`margin_labels`. mask: ``[B] bool``.
    """
    z = apply_activation(activation_fn, f32(scores))
    batch_size, n = z.shape[0], z.shape[1] - 1
    margins = z[:, :1] - z[:, 1:]
    err = (margins - margin_labels(labels, batch_size, n)) ** 2
    return reduce_rows(err, None if mask is None else row_mask(mask, batch_size), reduction)


class MarginMSELoss(CrossEncoderLoss):
    """Reference: ``MarginMSELoss(model, activation_fn=Identity(), **kwargs)``."""

    pair_layout = "anchor_columns"
    min_inputs = 3
    inputs_doc = "(query, positive, negative_1, ..., negative_n)"
    label_doc = "teacher margins ([n] per row) or teacher scores ([n + 1] per row)"
    list_labels_ok = True

    def __init__(self, model=None, activation_fn=IDENTITY, **kwargs) -> None:
        super().__init__(model)
        self.activation_fn, self._activation_name = resolve_activation(activation_fn)
        self.reduction = check_reduction(self.name, dict(kwargs))

    def compute_loss_from_scores(self, scores, labels=None, **context):
        check_context(self.name, context)
        return margin_mse(scores, labels, activation_fn=self.activation_fn, mask=context.get("mask"),
                          reduction=self.reduction)

    def get_config_dict(self):
        return {"activation_fn": self._activation_name}
