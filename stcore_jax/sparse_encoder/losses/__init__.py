"""The SparseEncoder (SPLADE) losses of sentence-transformers 6.2 as thin classes over the bi-encoder's pure functions.

A SparseEncoder's output is a ``sentence_embedding`` of shape ``[B, V]`` (the vocabulary size), so its losses are
the bi-encoder's losses over those vectors (:mod:`stcore_jax.sentence_transformer.losses`; the dispatcher
``compute_loss`` embeds the columns and calls ``compute_loss_from_embeddings``), with the sparse defaults
(dot-product similarity), plus:

* :class:`SpladeLoss` / :class:`CachedSpladeLoss`: a base loss plus FLOPS regularisers on queries and documents,
  returning a dict of components; the trainer's regulariser warm-up is :func:`regularizer_weight`
  (:meth:`SpladeLoss.at_step`);
* :class:`CSRLoss` / :class:`CSRReconstructionLoss`: autoencoder reconstruction terms plus a base loss, computed
  from each column's SparseAutoEncoder outputs (``compute_loss_from_outputs``);
* :class:`FlopsLoss`: the regulariser, over the global batch (default) or per data shard as PyTorch DDP;
* :func:`validate_sparse_loss`: the trainer's check that a loss can train a SparseEncoder (Sparse* ranking losses
  must be wrapped by SpladeLoss or CSRLoss, as in the reference).
"""

from stcore_jax.sparse_encoder.losses.csr import CSRLoss, CSRReconstructionLoss, csr_reconstruction_loss
from stcore_jax.sparse_encoder.losses.distill import SparseDistillKLDivLoss, SparseMarginMSELoss, SparseMSELoss
from stcore_jax.sparse_encoder.losses.flops import FlopsLoss, flops
from stcore_jax.sparse_encoder.losses.in_batch import SparseMultipleNegativesRankingLoss
from stcore_jax.sparse_encoder.losses.pairs import SparseAnglELoss, SparseCoSENTLoss, SparseCosineSimilarityLoss
from stcore_jax.sparse_encoder.losses.splade import CachedSpladeLoss, SpladeLoss
from stcore_jax.sparse_encoder.losses.standalone import standalone_error, validate_sparse_loss
from stcore_jax.sparse_encoder.losses.triplet import SparseTripletLoss
from stcore_jax.sparse_encoder.losses.warmup import regularizer_weight, warmup_steps

__all__ = [
    "CSRLoss",
    "CSRReconstructionLoss",
    "CachedSpladeLoss",
    "FlopsLoss",
    "SparseAnglELoss",
    "SparseCoSENTLoss",
    "SparseCosineSimilarityLoss",
    "SparseDistillKLDivLoss",
    "SparseMSELoss",
    "SparseMarginMSELoss",
    "SparseMultipleNegativesRankingLoss",
    "SparseTripletLoss",
    "SpladeLoss",
    "csr_reconstruction_loss",
    "flops",
    "regularizer_weight",
    "standalone_error",
    "validate_sparse_loss",
    "warmup_steps",
]
