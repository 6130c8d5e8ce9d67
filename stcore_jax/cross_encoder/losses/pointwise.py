"""Pointwise CrossEncoder losses on one pair per row: BinaryCrossEntropyLoss, CrossEntropyLoss, MSELoss.

Layout ``"pairs"``: columns (A, B), one pair (A_i, B_i) per row; scores ``[B]`` (or ``[B, 1]``) logits, or
``[B, C]`` class logits for CrossEntropyLoss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


def _flat_scores_and_labels(scores, labels, name: str) -> tuple[Array, Array]:
    scores = f32(scores).reshape(-1)
    labels = f32(labels)
    if labels.size != scores.shape[0]:
        raise ValueError(f"{name} expects {scores.shape[0]} labels (one per example), but got {labels.size} labels "
                         f"with shape {tuple(labels.shape)}.")
    return scores, labels.reshape(-1)


def binary_cross_entropy(scores, labels, *, pos_weight=None, activation_fn=None, mask=None,
                         reduction: str = "mean") -> Array:
    """``BCEWithLogitsLoss(a(z), y)`` with ``pos_weight`` p: mean_i -[p y log s(a(z)) + (1-y) log(1-s(a(z)))].

    Args:
      scores: ``[B]`` or ``[B, 1]`` logits z. labels: ``[B]`` 0/1 or floats in [0, 1].
      pos_weight: scalar weight of the positive term (None: 1). mask: ``[B] bool`` real rows.
    """
    z, y = _flat_scores_and_labels(scores, labels, "BinaryCrossEntropyLoss")
    z = apply_activation(activation_fn, z)
    p = 1.0 if pos_weight is None else f32(pos_weight)
    per_row = -(p * y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))
    return reduce_rows(per_row, None if mask is None else row_mask(mask, z.shape[0]), reduction)


def cross_entropy(scores, labels, *, activation_fn=None, mask=None, reduction: str = "mean") -> Array:
    """``CrossEntropyLoss(a(z), y)`` over ``C`` classes.

    Args:
      scores: ``[B, C]`` logits. labels: ``[B]`` (or ``[B, 1]``) integer class ids, or ``[B, C]`` float class
        probabilities (the reference's two label forms). mask: ``[B] bool`` real rows.
    """
    z = apply_activation(activation_fn, f32(scores))
    logp = jax.nn.log_softmax(z, axis=-1)
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        if labels.shape != z.shape:
            raise ValueError(f"CrossEntropyLoss: float labels are class probabilities of shape {z.shape}, "
                             f"got {labels.shape}.")
        per_row = -jnp.sum(f32(labels) * logp, axis=-1)
    else:
        labels = labels.reshape(-1) if labels.shape == (z.shape[0], 1) else labels
        if labels.shape != (z.shape[0],):
            raise ValueError(f"CrossEntropyLoss: class-id labels must be [{z.shape[0]}], got {labels.shape}.")
        per_row = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return reduce_rows(per_row, None if mask is None else row_mask(mask, z.shape[0]), reduction)


def mse(scores, labels, *, activation_fn=None, mask=None, reduction: str = "mean") -> Array:
    """``MSELoss(a(z), y)``: mean_i (a(z_i) - y_i)^2. scores ``[B]``/``[B, 1]``, labels ``[B]``, mask ``[B]``."""
    z, y = _flat_scores_and_labels(scores, labels, "MSELoss")
    per_row = (apply_activation(activation_fn, z) - y) ** 2
    return reduce_rows(per_row, None if mask is None else row_mask(mask, z.shape[0]), reduction)


class _PairLoss(CrossEncoderLoss):
    pair_layout = "pairs"
    min_inputs = max_inputs = 2
    inputs_doc = "(text_A, text_B)"


class BinaryCrossEntropyLoss(_PairLoss):
    """Reference: ``BinaryCrossEntropyLoss(model, activation_fn=Identity(), pos_weight=None, **kwargs)``."""

    label_doc = "a 0/1 or [0, 1] float label"

    def __init__(self, model=None, activation_fn=IDENTITY, pos_weight=None, **kwargs) -> None:
        super().__init__(model)
        self.activation_fn, self._activation_name = resolve_activation(activation_fn)
        self.pos_weight = None if pos_weight is None else float(np.asarray(pos_weight))
        self.reduction = check_reduction(self.name, dict(kwargs))

    def compute_loss_from_scores(self, scores, labels=None, **context):
        check_context(self.name, context)
        return binary_cross_entropy(scores, labels, pos_weight=self.pos_weight, activation_fn=self.activation_fn,
                                    mask=context.get("mask"), reduction=self.reduction)

    def get_config_dict(self):
        return {"activation_fn": self._activation_name, "pos_weight": self.pos_weight}


class CrossEntropyLoss(_PairLoss):
    """Reference: ``CrossEntropyLoss(model, activation_fn=Identity(), **kwargs)``; any ``num_labels``.

    Like the reference it defines no config of its own (its model-card entry is empty).
    """

    any_num_labels = True
    label_doc = "a class-id (or class-probability) label"

    def __init__(self, model=None, activation_fn=IDENTITY, **kwargs) -> None:
        super().__init__(model)
        self.activation_fn, self._activation_name = resolve_activation(activation_fn)
        self.reduction = check_reduction(self.name, dict(kwargs))

    def compute_loss_from_scores(self, scores, labels=None, **context):
        check_context(self.name, context)
        return cross_entropy(scores, labels, activation_fn=self.activation_fn, mask=context.get("mask"),
                             reduction=self.reduction)


class MSELoss(_PairLoss):
    """Reference: ``MSELoss(model, activation_fn=Identity(), **kwargs)``."""

    label_doc = "a float score label"

    def __init__(self, model=None, activation_fn=IDENTITY, **kwargs) -> None:
        super().__init__(model)
        self.activation_fn, self._activation_name = resolve_activation(activation_fn)
        self.reduction = check_reduction(self.name, dict(kwargs))

    def compute_loss_from_scores(self, scores, labels=None, **context):
        check_context(self.name, context)
        return mse(scores, labels, activation_fn=self.activation_fn, mask=context.get("mask"),
                   reduction=self.reduction)

    def get_config_dict(self):
        return {"activation_fn": self._activation_name}
