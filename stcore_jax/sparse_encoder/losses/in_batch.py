"""SparseMultipleNegativesRankingLoss: the bi-encoder's MNRL over sparse ``[B, V]`` embeddings.

The function is :func:`stcore_jax.sentence_transformer.losses.mnrl.multiple_negatives_ranking_loss`, unchanged;
only the defaults differ, as in sentence-transformers 6.2: ``scale=1.0`` and dot-product similarity (SPLADE
vectors are non-negative and unnormalised, and their dot product is what a sparse index computes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stcore_jax.sentence_transformer.losses.mnrl import MultipleNegativesRankingLoss
from stcore_jax.similarity import dot_score
from stcore_jax.sparse_encoder.losses.standalone import NeedsWrapper


class SparseMultipleNegativesRankingLoss(NeedsWrapper, MultipleNegativesRankingLoss):
    """Columns ``(anchor, positive, negative_1, ..., negative_n)``, no label. Must be wrapped by SpladeLoss or
    CSRLoss. ``num_shards`` (keyword-only) as in the bi-encoder's loss: with ``gather_across_devices=False`` each
    data shard's anchors are scored against that shard's candidates only, as on each PyTorch DDP rank."""

    def __init__(self, model=None, scale: float = 1.0, similarity_fct: Callable | str = dot_score,
                 gather_across_devices: bool = False, directions: Sequence[str] = ("query_to_doc",),
                 partition_mode: str = "joint", hardness_mode: str | None = None, hardness_strength: float = 0.0,
                 *, num_shards: int = 1) -> None:
        super().__init__(model, scale=scale, similarity_fct=similarity_fct,
                         gather_across_devices=gather_across_devices, directions=directions,
                         partition_mode=partition_mode, hardness_mode=hardness_mode,
                         hardness_strength=hardness_strength, num_shards=num_shards)
