"""SparseTripletLoss: the bi-encoder's TripletLoss over sparse ``[B, V]`` embeddings, to be wrapped by SpladeLoss
or CSRLoss. Same defaults as the bi-encoder's (Euclidean distance, margin 5), as in sentence-transformers 6.2."""

from __future__ import annotations

from collections.abc import Callable

from stcore_jax.sentence_transformer.losses.triplet import TripletDistanceMetric, TripletLoss
from stcore_jax.sparse_encoder.losses.standalone import NeedsWrapper


class SparseTripletLoss(NeedsWrapper, TripletLoss):
    """Columns ``(anchor, positive, negative)``, no label: ``mean(relu(d(a, p) - d(a, n) + margin))``. Must be
    wrapped by SpladeLoss or CSRLoss."""

    def __init__(self, model=None, distance_metric: Callable | str = TripletDistanceMetric.EUCLIDEAN,
                 triplet_margin: float = 5) -> None:
        super().__init__(model, distance_metric=distance_metric, triplet_margin=triplet_margin)
