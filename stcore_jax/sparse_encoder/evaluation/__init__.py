"""Evaluators for :class:`~stcore_jax.SparseEncoder` (sentence-transformers' ``sparse_encoder.evaluation``).

Each is a thin subclass of the dense evaluator in ``stcore_jax/sentence_transformer/evaluation/`` of the same
task: it encodes with ``max_active_dims`` (top-k dimensions per embedding, ``None``: the model's) and adds the
reference's sparsity metrics (``active_dims``, ``sparsity_ratio``, prefixed per side where the reference
prefixes them, and ``avg_flops`` for retrieval); see ``sparsity.py``.
"""

from stcore_jax.sparse_encoder.evaluation.binary_classification import SparseBinaryClassificationEvaluator
from stcore_jax.sparse_encoder.evaluation.embedding_similarity import SparseEmbeddingSimilarityEvaluator
from stcore_jax.sparse_encoder.evaluation.information_retrieval import SparseInformationRetrievalEvaluator
from stcore_jax.sparse_encoder.evaluation.mse import SparseMSEEvaluator
from stcore_jax.sparse_encoder.evaluation.nano_beir import SparseNanoBEIREvaluator
from stcore_jax.sparse_encoder.evaluation.reranking import SparseRerankingEvaluator
from stcore_jax.sparse_encoder.evaluation.translation import SparseTranslationEvaluator
from stcore_jax.sparse_encoder.evaluation.triplet import SparseTripletEvaluator

__all__ = [
    "SparseBinaryClassificationEvaluator",
    "SparseEmbeddingSimilarityEvaluator",
    "SparseInformationRetrievalEvaluator",
    "SparseMSEEvaluator",
    "SparseNanoBEIREvaluator",
    "SparseRerankingEvaluator",
    "SparseTranslationEvaluator",
    "SparseTripletEvaluator",
]
