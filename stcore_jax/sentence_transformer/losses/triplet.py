"""TripletLoss over explicit (anchor, positive, negative) triplets."""

from __future__ import annotations

from collections.abc import Callable

import jax

from stcore_jax.base.loss import Loss, check_context, f32, masked_mean, sharding_agnostic
from stcore_jax.similarity import pairwise_cos_sim, pairwise_euclidean_sim, pairwise_manhattan_sim

_NAMES = ("EUCLIDEAN", "MANHATTAN", "COSINE")


class TripletDistanceMetric:
    """Pairwise distances ``[B]`` for :class:`TripletLoss` (names as in sentence-transformers)."""

    COSINE = staticmethod(lambda x, y: 1.0 - pairwise_cos_sim(x, y))
    EUCLIDEAN = staticmethod(lambda x, y: -pairwise_euclidean_sim(x, y))
    MANHATTAN = staticmethod(lambda x, y: -pairwise_manhattan_sim(x, y))

    @classmethod
    def resolve(cls, metric: Callable | str) -> Callable:
        if callable(metric):
            return metric
        key = str(metric).split(".")[-1].upper()
        if key not in _NAMES:
            raise ValueError(f"Unknown distance metric {metric!r}; use one of {_NAMES}.")
        return getattr(cls, key)

    @classmethod
    def name_of(cls, metric: Callable) -> str:
        for key in _NAMES:
            if getattr(cls, key) is metric:
                return f"TripletDistanceMetric.{key}"
        return getattr(metric, "__name__", str(metric))


@sharding_agnostic
def triplet_loss(anchor, positive, negative, *, distance_metric: Callable | str = "EUCLIDEAN",
                 triplet_margin: float = 5.0, mask=None):
    """TripletLoss (sentence-transformers 6.2): ``mean(relu(d(a, p) - d(a, n) + margin))``.

    Args:
      anchor, positive, negative: ``[B, D]``.
      distance_metric: ``TripletDistanceMetric.EUCLIDEAN`` (default), ``COSINE`` or ``MANHATTAN``
        (or their names, or any ``(x, y) -> [B]`` callable).
      triplet_margin: default 5.
      mask: optional ``[B] bool`` of real rows.
    """
    distance = TripletDistanceMetric.resolve(distance_metric)
    a = f32(anchor)
    losses = jax.nn.relu(distance(a, f32(positive)) - distance(a, f32(negative)) + triplet_margin)
    return masked_mean(losses, mask)


class TripletLoss(Loss):
    """Columns ``(anchor, positive, negative)``, no label. See :func:`triplet_loss`."""

    min_inputs, max_inputs, label = 3, 3, "none"
    inputs_doc = "(anchor, positive, negative)"

    def __init__(self, model=None, distance_metric: Callable | str = TripletDistanceMetric.EUCLIDEAN,
                 triplet_margin: float = 5) -> None:
        super().__init__(model)
        self.distance_metric = TripletDistanceMetric.resolve(distance_metric)
        self.triplet_margin = triplet_margin

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        anchor, positive, negative = embeddings
        return triplet_loss(anchor, positive, negative, distance_metric=self.distance_metric,
                            triplet_margin=self.triplet_margin, mask=mask)

    def get_config_dict(self):
        return {"distance_metric": TripletDistanceMetric.name_of(self.distance_metric),
                "triplet_margin": self.triplet_margin}
