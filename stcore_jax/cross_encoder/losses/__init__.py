"""CrossEncoder losses: pure JAX functions over pair scores (logits) plus classes with the sentence-transformers
names and constructors (stcore_jax/cross_encoder/losses/_common.py explains the declaration and pair layouts)."""

from stcore_jax.cross_encoder.losses._common import PAIR_LAYOUTS, CrossEncoderLoss, ListwiseLoss, pad_lists
from stcore_jax.cross_encoder.losses.adr import ADRMSELoss, adr_mse
from stcore_jax.cross_encoder.losses.lambda_ranking import (
    BaseWeightingScheme,
    LambdaLoss,
    LambdaRankScheme,
    NDCGLoss1Scheme,
    NDCGLoss2PPScheme,
    NDCGLoss2Scheme,
    NoWeightingScheme,
    RankNetLoss,
    lambda_loss,
)
from stcore_jax.cross_encoder.losses.listnet import ListNetLoss, list_net
from stcore_jax.cross_encoder.losses.margin import MarginMSELoss, margin_mse
from stcore_jax.cross_encoder.losses.mnrl import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
    in_batch_candidates,
    multiple_negatives_ranking,
)
from stcore_jax.cross_encoder.losses.plist_mle import (
    ListMLELoss,
    PListMLELambdaWeight,
    PListMLELoss,
    list_mle,
    p_list_mle,
)
from stcore_jax.cross_encoder.losses.pointwise import (
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    MSELoss,
    binary_cross_entropy,
    cross_entropy,
    mse,
)

__all__ = [
    "ADRMSELoss",
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "MultipleNegativesRankingLoss",
    "CachedMultipleNegativesRankingLoss",
    "MarginMSELoss",
    "MSELoss",
    "ListNetLoss",
    "ListMLELoss",
    "PListMLELoss",
    "PListMLELambdaWeight",
    "LambdaLoss",
    "NoWeightingScheme",
    "NDCGLoss1Scheme",
    "NDCGLoss2Scheme",
    "LambdaRankScheme",
    "NDCGLoss2PPScheme",
    "RankNetLoss",
    # stcore_jax additions
    "BaseWeightingScheme",
    "CrossEncoderLoss",
    "ListwiseLoss",
    "PAIR_LAYOUTS",
    "pad_lists",
    "adr_mse",
    "binary_cross_entropy",
    "cross_entropy",
    "in_batch_candidates",
    "lambda_loss",
    "list_mle",
    "list_net",
    "margin_mse",
    "mse",
    "multiple_negatives_ranking",
    "p_list_mle",
]
