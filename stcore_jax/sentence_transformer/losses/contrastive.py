"""ContrastiveLoss and OnlineContrastiveLoss over labelled pairs (1 = similar, 0 = dissimilar)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import (
    LabelRange,
    Loss,
    LossInputs,
    check_context,
    f32,
    masked_mean,
    row_mask,
    sharding_agnostic,
)
from stcore_jax.similarity import pairwise_cos_sim

_PAIRWISE_DISTANCE_EPS = 1e-6  # torch.nn.functional.pairwise_distance adds eps to the difference


def _pairwise_distance(x, y, p):
    diff = f32(x) - f32(y) + _PAIRWISE_DISTANCE_EPS
    if p == 1:
        return jnp.sum(jnp.abs(diff), axis=-1)
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


class SiameseDistanceMetric:
    """Pairwise distances ``[B]`` for contrastive losses (names as in sentence-transformers).

    EUCLIDEAN and MANHATTAN follow ``torch.nn.functional.pairwise_distance`` (``||x - y + 1e-6||``).
    """

    EUCLIDEAN = staticmethod(lambda x, y: _pairwise_distance(x, y, 2))
    MANHATTAN = staticmethod(lambda x, y: _pairwise_distance(x, y, 1))
    COSINE_DISTANCE = staticmethod(lambda x, y: 1.0 - pairwise_cos_sim(x, y))

    @classmethod
    def resolve(cls, metric: Callable | str) -> Callable:
        if callable(metric):
            return metric
        key = str(metric).split(".")[-1].upper()
        if key == "COSINE":
            key = "COSINE_DISTANCE"
        if key not in ("EUCLIDEAN", "MANHATTAN", "COSINE_DISTANCE"):
            raise ValueError(f"Unknown distance metric {metric!r}; use EUCLIDEAN, MANHATTAN or COSINE_DISTANCE.")
        return getattr(cls, key)

    @classmethod
    def name_of(cls, metric: Callable) -> str:
        for key in ("EUCLIDEAN", "MANHATTAN", "COSINE_DISTANCE"):
            if getattr(cls, key) is metric:
                return f"SiameseDistanceMetric.{key}"
        return getattr(metric, "__name__", str(metric))


def _binary_labels(labels, batch, name):
    labels = jnp.asarray(labels)
    if labels.size != batch:
        raise ValueError(f"{name} expects {batch} labels (one per example), but got {labels.size} labels "
                         f"with shape {tuple(labels.shape)}.")
    return labels.reshape(-1)


@sharding_agnostic
def contrastive_loss(embeddings_a, embeddings_b, labels, *, distance_metric: Callable | str = "COSINE_DISTANCE",
                     margin: float = 0.5, size_average: bool = True, mask=None):
    """ContrastiveLoss (Hadsell et al. 2006; sentence-transformers 6.2).

    ``0.5 * (y * d^2 + (1 - y) * relu(margin - d)^2)`` per pair, averaged (``size_average``) or
    summed. ``labels [B]``: 1 similar, 0 dissimilar (other values weight the two terms, as in the
    reference). ``distance_metric`` default cosine distance, ``margin`` default 0.5.
    """
    distance = SiameseDistanceMetric.resolve(distance_metric)
    a = f32(embeddings_a)
    labels = f32(_binary_labels(labels, a.shape[0], "ContrastiveLoss"))
    d = distance(a, f32(embeddings_b))
    per_pair = 0.5 * (labels * d ** 2 + (1 - labels) * jax.nn.relu(margin - d) ** 2)
    if size_average:
        return masked_mean(per_pair, mask)
    return jnp.sum(jnp.where(row_mask(mask, a.shape[0]), per_pair, 0.0))


@sharding_agnostic
def online_contrastive_loss(embeddings_a, embeddings_b, labels, *,
                            distance_metric: Callable | str = "COSINE_DISTANCE", margin: float = 0.5, mask=None):
    """OnlineContrastiveLoss (sentence-transformers 6.2): ContrastiveLoss over the hard pairs only.

    Hard negatives: label-0 pairs closer than the farthest positive (or than the mean negative
    distance if the batch has no positive). Hard positives: label-1 pairs farther than the closest
    negative (or than the mean positive distance if there is no negative). Returns the *sum*
    ``sum(d_pos^2) + sum(relu(margin - d_neg)^2)``. Pairs with other labels are ignored.
    """
    distance = SiameseDistanceMetric.resolve(distance_metric)
    a = f32(embeddings_a)
    batch = a.shape[0]
    labels = _binary_labels(labels, batch, "OnlineContrastiveLoss")
    valid = row_mask(mask, batch)
    d = distance(a, f32(embeddings_b))
    is_pos, is_neg = valid & (labels == 1), valid & (labels == 0)
    n_pos, n_neg = jnp.sum(is_pos), jnp.sum(is_neg)
    ds = jax.lax.stop_gradient(d)  # thresholds are only compared against
    pos_max = jnp.max(jnp.where(is_pos, ds, -jnp.inf))
    neg_min = jnp.min(jnp.where(is_neg, ds, jnp.inf))
    pos_mean = jnp.sum(jnp.where(is_pos, ds, 0.0)) / jnp.maximum(n_pos, 1)
    neg_mean = jnp.sum(jnp.where(is_neg, ds, 0.0)) / jnp.maximum(n_neg, 1)
    hard_neg = is_neg & (d < jnp.where(n_pos > 0, pos_max, neg_mean))
    hard_pos = is_pos & (d > jnp.where(n_neg > 0, neg_min, pos_mean))
    return (jnp.sum(jnp.where(hard_pos, d ** 2, 0.0))
            + jnp.sum(jnp.where(hard_neg, jax.nn.relu(margin - d) ** 2, 0.0)))


class ContrastiveLoss(Loss):
    """Columns ``(text_A, text_B)`` with a 1/0 label. See :func:`contrastive_loss`."""

    min_inputs, max_inputs, label = 2, 2, "required"
    inputs_doc = "(text_A, text_B)"
    label_doc = "a 1/0 (similar/dissimilar) label"
    # A label outside [0, 1] turns the loss into a reward for the opposite (its terms are y * d^2 and (1 - y) * hinge).
    inputs = LossInputs(label_range=LabelRange("ContrastiveLoss", "labels in [0, 1] (1 = similar, 0 = dissimilar)",
                                               lambda y: (y < 0) | (y > 1)))

    def __init__(self, model=None, distance_metric: Callable | str = SiameseDistanceMetric.COSINE_DISTANCE,
                 margin: float = 0.5, size_average: bool = True) -> None:
        super().__init__(model)
        self.distance_metric = SiameseDistanceMetric.resolve(distance_metric)
        self.margin = margin
        self.size_average = size_average

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} needs labels.")
        return contrastive_loss(embeddings[0], embeddings[1], labels, distance_metric=self.distance_metric,
                                margin=self.margin, size_average=self.size_average, mask=mask)

    def get_config_dict(self):
        return {"distance_metric": SiameseDistanceMetric.name_of(self.distance_metric), "margin": self.margin,
                "size_average": self.size_average}


class OnlineContrastiveLoss(Loss):
    """Columns ``(text_A, text_B)`` with a 1/0 label. See :func:`online_contrastive_loss`."""

    min_inputs, max_inputs, label = 2, 2, "required"
    inputs_doc = "(text_A, text_B)"
    label_doc = "a 1/0 (similar/dissimilar) label"
    # Pairs labelled neither 0 nor 1 are neither positives nor negatives: silently ignored.
    inputs = LossInputs(label_range=LabelRange("OnlineContrastiveLoss", "labels 0 or 1 (pairs labelled otherwise would "
                                               "be ignored)", lambda y: (y != 0) & (y != 1)))

    def __init__(self, model=None, distance_metric: Callable | str = SiameseDistanceMetric.COSINE_DISTANCE,
                 margin: float = 0.5) -> None:
        super().__init__(model)
        self.distance_metric = SiameseDistanceMetric.resolve(distance_metric)
        self.margin = margin

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} needs labels.")
        return online_contrastive_loss(embeddings[0], embeddings[1], labels, distance_metric=self.distance_metric,
                                       margin=self.margin, mask=mask)

    def get_config_dict(self):
        return {"distance_metric": SiameseDistanceMetric.name_of(self.distance_metric), "margin": self.margin}
