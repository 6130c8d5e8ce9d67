"""The sentence-transformers loss catalogue as pure JAX functions plus thin holder classes.

Each ``*_loss`` function maps per-column embeddings (``[B, D]`` arrays) and labels to a float32
scalar (GlobalOrthogonalRegularization: a dict of scalars). Each class has the sentence-transformers
name and constructor, declares its input columns and label (``validate_columns``), and implements
``compute_loss_from_embeddings(embeddings, labels, **context)``; see :mod:`stcore_jax.base.loss`
for the context keywords (``mask``, ``params``, ``key``, ``num_shards``, ``guide_embeddings``).
"""

from stcore_jax.base.loss import Loss, resolve_similarity, sharding_agnostic
from stcore_jax.sentence_transformer.losses.adaptive_layer import (
    AdaptiveLayerLoss,
    Matryoshka2dLoss,
    adaptive_layer_loss,
)
from stcore_jax.sentence_transformer.losses.batch_triplet import (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchHardTripletLossDistanceFunction,
    BatchSemiHardTripletLoss,
    batch_all_triplet_loss,
    batch_hard_soft_margin_triplet_loss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
)
from stcore_jax.sentence_transformer.losses.cached import (
    CachedGISTEmbedLoss,
    CachedMultipleNegativesRankingLoss,
    CachedMultipleNegativesSymmetricRankingLoss,
)
from stcore_jax.sentence_transformer.losses.contrastive import (
    ContrastiveLoss,
    OnlineContrastiveLoss,
    SiameseDistanceMetric,
    contrastive_loss,
    online_contrastive_loss,
)
from stcore_jax.sentence_transformer.losses.contrastive_tension import (
    ContrastiveTensionLossInBatchNegatives,
    contrastive_tension_in_batch_negatives_loss,
)
from stcore_jax.sentence_transformer.losses.cosent import AnglELoss, CoSENTLoss, angle_loss, cosent_loss
from stcore_jax.sentence_transformer.losses.cosine_similarity import CosineSimilarityLoss, cosine_similarity_loss
from stcore_jax.sentence_transformer.losses.distill import (
    DistillKLDivLoss,
    EmbedDistillLoss,
    MarginMSELoss,
    MSELoss,
    distill_kl_div_loss,
    embed_distill_loss,
    margin_mse_loss,
    mse_loss,
)
from stcore_jax.sentence_transformer.losses.embed import compute_loss, embed_columns
from stcore_jax.sentence_transformer.losses.gist import GISTEmbedLoss, gist_embed_loss
from stcore_jax.sentence_transformer.losses.gor import (
    GlobalOrthogonalRegularizationLoss,
    global_orthogonal_regularization_loss,
)
from stcore_jax.sentence_transformer.losses.matryoshka import MatryoshkaLoss, matryoshka_loss
from stcore_jax.sentence_transformer.losses.mega_batch import MegaBatchMarginLoss, mega_batch_margin_loss
from stcore_jax.sentence_transformer.losses.mnrl import (
    MultipleNegativesRankingLoss,
    MultipleNegativesSymmetricRankingLoss,
    multiple_negatives_ranking_loss,
    multiple_negatives_symmetric_ranking_loss,
)
from stcore_jax.sentence_transformer.losses.ring import ring_multiple_negatives_ranking_loss
from stcore_jax.sentence_transformer.losses.softmax import SoftmaxLoss, softmax_loss
from stcore_jax.sentence_transformer.losses.triplet import TripletDistanceMetric, TripletLoss, triplet_loss

__all__ = [
    "CachedGISTEmbedLoss",
    "CachedMultipleNegativesRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "compute_loss",
    "embed_columns",
    "AdaptiveLayerLoss",
    "AnglELoss",
    "BatchAllTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchHardTripletLoss",
    "BatchHardTripletLossDistanceFunction",
    "BatchSemiHardTripletLoss",
    "CoSENTLoss",
    "ContrastiveLoss",
    "ContrastiveTensionLossInBatchNegatives",
    "CosineSimilarityLoss",
    "DistillKLDivLoss",
    "EmbedDistillLoss",
    "GISTEmbedLoss",
    "GlobalOrthogonalRegularizationLoss",
    "Loss",
    "MSELoss",
    "MarginMSELoss",
    "Matryoshka2dLoss",
    "MatryoshkaLoss",
    "MegaBatchMarginLoss",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "OnlineContrastiveLoss",
    "SiameseDistanceMetric",
    "SoftmaxLoss",
    "TripletDistanceMetric",
    "TripletLoss",
    "adaptive_layer_loss",
    "angle_loss",
    "batch_all_triplet_loss",
    "batch_hard_soft_margin_triplet_loss",
    "batch_hard_triplet_loss",
    "batch_semi_hard_triplet_loss",
    "contrastive_loss",
    "contrastive_tension_in_batch_negatives_loss",
    "cosent_loss",
    "cosine_similarity_loss",
    "distill_kl_div_loss",
    "embed_distill_loss",
    "gist_embed_loss",
    "global_orthogonal_regularization_loss",
    "margin_mse_loss",
    "matryoshka_loss",
    "mega_batch_margin_loss",
    "mse_loss",
    "multiple_negatives_ranking_loss",
    "multiple_negatives_symmetric_ranking_loss",
    "online_contrastive_loss",
    "resolve_similarity",
    "ring_multiple_negatives_ranking_loss",
    "sharding_agnostic",
    "softmax_loss",
    "triplet_loss",
]
