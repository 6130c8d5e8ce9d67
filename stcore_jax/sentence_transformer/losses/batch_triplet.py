"""Batch triplet losses: one text column plus a class label; triplets are mined inside the batch.

Every function takes ``embeddings [B, D]`` and integer ``labels [B]`` and a distance function
``[B, D] -> [B, B]`` (:class:`BatchHardTripletLossDistanceFunction`). With ``mask``, padded rows
are neither anchors, positives nor negatives.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import Loss, check_context, f32, masked_mean, row_mask, sharding_agnostic
from stcore_jax.similarity import cos_sim


class BatchHardTripletLossDistanceFunction:
    """Pairwise distance matrices ``[B, B]`` over one batch of embeddings."""

    @staticmethod
    def cosine_distance(embeddings):
        """``1 - cos_sim(e, e)``."""
        return 1.0 - cos_sim(embeddings, embeddings)

    @staticmethod
    def euclidean_distance(embeddings, squared: bool = False):
        """L2 distances from the Gram matrix, clamped at 0; the diagonal is exactly 0 and has a
        zero (not NaN) gradient."""
        embeddings = f32(embeddings)
        gram = embeddings @ embeddings.T
        sq = jnp.diagonal(gram)
        dist = jnp.maximum(sq[None, :] - 2.0 * gram + sq[:, None], 0.0)
        if squared:
            return dist
        zero = dist == 0.0
        # sqrt has an infinite slope at 0: evaluate it at a tiny value there and zero the result.
        return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1e-16, dist)))

    eucledian_distance = euclidean_distance  # the reference's old spelling


def _resolve_distance(fn):
    if callable(fn):
        return fn
    return getattr(BatchHardTripletLossDistanceFunction, str(fn))


def _labels(labels, batch, name):
    labels = jnp.asarray(labels)
    if labels.size != batch:
        raise ValueError(f"{name} expects {batch} labels (one per example), but got {labels.size} labels "
                         f"with shape {tuple(labels.shape)}.")
    return labels.reshape(-1)


def _hardest(labels, dist, valid):
    """Per anchor: distance to its farthest positive and to its closest negative (reference rules:
    0 if there is no positive; row max if there is no negative)."""
    eye = jnp.eye(labels.shape[0], dtype=bool)
    same = labels[:, None] == labels[None, :]
    ap_mask = same & ~eye & valid[None, :]
    hardest_pos = jnp.max(jnp.where(ap_mask, dist, 0.0), axis=1)
    an_mask = ~same & valid[None, :]
    row_max = jnp.max(jnp.where(valid[None, :], dist, -jnp.inf), axis=1, keepdims=True)
    hardest_neg = jnp.min(jnp.where(an_mask, dist, dist + row_max), axis=1)
    return hardest_pos, hardest_neg


@sharding_agnostic
def batch_hard_triplet_loss(embeddings, labels, *, distance_metric: Callable | str = "euclidean_distance",
                            margin: float = 5.0, mask=None):
    """BatchHardTripletLoss (Hermans et al. 2017): per anchor, hardest positive vs hardest negative,
    ``mean(relu(d_ap - d_an + margin))``. Defaults: Euclidean distance, margin 5."""
    e = f32(embeddings)
    valid = row_mask(mask, e.shape[0])
    labels = _labels(labels, e.shape[0], "BatchHardTripletLoss")
    hp, hn = _hardest(labels, _resolve_distance(distance_metric)(e), valid)
    return masked_mean(jax.nn.relu(hp - hn + margin), mask)


@sharding_agnostic
def batch_hard_soft_margin_triplet_loss(embeddings, labels, *,
                                        distance_metric: Callable | str = "euclidean_distance", mask=None):
    """BatchHardSoftMarginTripletLoss: as batch-hard, with ``softplus(d_ap - d_an)`` instead of a margin."""
    e = f32(embeddings)
    valid = row_mask(mask, e.shape[0])
    labels = _labels(labels, e.shape[0], "BatchHardSoftMarginTripletLoss")
    hp, hn = _hardest(labels, _resolve_distance(distance_metric)(e), valid)
    return masked_mean(jax.nn.softplus(hp - hn), mask)


@sharding_agnostic
def batch_all_triplet_loss(embeddings, labels, *, distance_metric: Callable | str = "euclidean_distance",
                           margin: float = 5.0, mask=None):
    """BatchAllTripletLoss: every valid triplet ``(a, p, n)`` (``label_a == label_p``, ``a != p``,
    ``label_n != label_a``) contributes ``relu(d_ap - d_an + margin)``; the sum is divided by the
    number of triplets with a positive loss. The ``[B, B, B]`` term is a fused elementwise-reduce
    under ``jit``."""
    e = f32(embeddings)
    batch = e.shape[0]
    valid = row_mask(mask, batch)
    labels = _labels(labels, batch, "BatchAllTripletLoss")
    dist = _resolve_distance(distance_metric)(e)
    same = labels[:, None] == labels[None, :]
    ap_ok = same & ~jnp.eye(batch, dtype=bool) & valid[:, None] & valid[None, :]
    an_ok = ~same & valid[None, :]
    ok = ap_ok[:, :, None] & an_ok[:, None, :]
    t = dist[:, :, None] - dist[:, None, :] + margin
    t = jnp.where(ok & (t > 0), t, 0.0)
    num_positive = jnp.sum(t > 1e-16)
    return jnp.sum(t) / (num_positive + 1e-16)


@sharding_agnostic
def batch_semi_hard_triplet_loss(embeddings, labels, *, distance_metric: Callable | str = "euclidean_distance",
                                 margin: float = 5.0, mask=None):
    """BatchSemiHardTripletLoss (FaceNet, Schroff et al. 2015): for each anchor-positive pair, the
    closest negative that is still farther than the positive; if none, the farthest negative.
    Sorted search, ``O(B^2 log B)``, no ``[B, B, B]`` tensor."""
    e = f32(embeddings)
    batch = e.shape[0]
    valid = row_mask(mask, batch)
    labels = _labels(labels, batch, "BatchSemiHardTripletLoss")
    dist = _resolve_distance(distance_metric)(e)
    same = labels[:, None] == labels[None, :]
    neg_ok = ~same & valid[None, :]

    sorted_neg = jnp.sort(jnp.where(neg_ok, dist, jnp.inf), axis=1)
    # First negative strictly farther than d(a, p), per (a, p).
    positions = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="right"))(
        jax.lax.stop_gradient(sorted_neg), jax.lax.stop_gradient(dist))
    outside = jnp.take_along_axis(sorted_neg, jnp.minimum(positions, batch - 1), axis=1)
    # Farthest negative of each anchor, shifted so masked entries cannot win (reference formula).
    row_min = jnp.min(dist, axis=1, keepdims=True)
    inside = jnp.max((dist - row_min) * neg_ok, axis=1, keepdims=True) + row_min
    semi_hard = jnp.where(jnp.isfinite(outside), outside, inside)

    pos_mask = (same & ~jnp.eye(batch, dtype=bool) & valid[:, None] & valid[None, :]).astype(jnp.float32)
    loss = jnp.maximum((dist - semi_hard + margin) * pos_mask, 0.0)
    return jnp.sum(loss) / jnp.maximum(jnp.sum(pos_mask), 1e-16)


class _BatchTripletBase(Loss):
    min_inputs, max_inputs, label = 1, 1, "required"
    inputs_doc = "(one text column)"
    label_doc = "a class label"
    _fn = None

    def __init__(self, model=None,
                 distance_metric: Callable | str = BatchHardTripletLossDistanceFunction.euclidean_distance,
                 margin: float = 5) -> None:
        super().__init__(model)
        self.distance_metric = _resolve_distance(distance_metric)
        self.triplet_margin = margin

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} needs class labels.")
        return type(self)._fn(embeddings[0], labels, distance_metric=self.distance_metric,
                              margin=self.triplet_margin, mask=mask)

    def get_config_dict(self):
        return {"distance_metric": getattr(self.distance_metric, "__name__", str(self.distance_metric)),
                "margin": self.triplet_margin}


class BatchAllTripletLoss(_BatchTripletBase):
    """One text column with a class label. See :func:`batch_all_triplet_loss`."""

    _fn = staticmethod(batch_all_triplet_loss)


class BatchHardTripletLoss(_BatchTripletBase):
    """One text column with a class label. See :func:`batch_hard_triplet_loss`."""

    _fn = staticmethod(batch_hard_triplet_loss)


class BatchSemiHardTripletLoss(_BatchTripletBase):
    """One text column with a class label. See :func:`batch_semi_hard_triplet_loss`."""

    _fn = staticmethod(batch_semi_hard_triplet_loss)

    @property
    def margin(self):
        return self.triplet_margin


class BatchHardSoftMarginTripletLoss(_BatchTripletBase):
    """One text column with a class label. See :func:`batch_hard_soft_margin_triplet_loss`."""

    def __init__(self, model=None,
                 distance_metric: Callable | str = BatchHardTripletLossDistanceFunction.euclidean_distance) -> None:
        super().__init__(model, distance_metric)

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} needs class labels.")
        return batch_hard_soft_margin_triplet_loss(embeddings[0], labels, distance_metric=self.distance_metric,
                                                   mask=mask)

    def get_config_dict(self):
        return {"distance_metric": getattr(self.distance_metric, "__name__", str(self.distance_metric))}
