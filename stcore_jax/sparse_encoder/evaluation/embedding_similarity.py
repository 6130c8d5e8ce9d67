"""SparseEmbeddingSimilarityEvaluator: the dense STS evaluator on SPLADE embeddings, plus sparsity."""

from __future__ import annotations

from typing import Literal

from stcore_jax.sentence_transformer.evaluation.embedding_similarity import EmbeddingSimilarityEvaluator
from stcore_jax.similarity import SimilarityFunction
from stcore_jax.sparse_encoder.evaluation.sparsity import PooledSparsityMixin


class SparseEmbeddingSimilarityEvaluator(PooledSparsityMixin, EmbeddingSimilarityEvaluator):
    """Pearson / Spearman correlation of pair similarities (the model's, ``dot`` by default) with gold ``scores``.

    Arguments as sentence-transformers 6.2's ``SparseEmbeddingSimilarityEvaluator`` (``max_active_dims``: top-k
    dimensions per embedding, ``None`` keeps the model's). Metrics: ``pearson_{fn}``, ``spearman_{fn}`` (and
    ``*_max`` for several functions), then ``active_dims`` and ``sparsity_ratio`` (the mean over the two
    sides). Primary metric as the dense evaluator's (``spearman_dot``).
    """

    def __init__(
        self,
        sentences1: list[str],
        sentences2: list[str],
        scores: list[float],
        batch_size: int = 16,
        main_similarity: str | SimilarityFunction | None = None,
        similarity_fn_names: list[Literal["cosine", "euclidean", "manhattan", "dot"]] | None = None,
        name: str = "",
        show_progress_bar: bool = False,
        write_csv: bool = True,
        max_active_dims: int | None = None,
    ):
        self.max_active_dims = max_active_dims
        self.reset_sparsity()
        super().__init__(sentences1=sentences1, sentences2=sentences2, scores=scores, batch_size=batch_size,
                         main_similarity=main_similarity, similarity_fn_names=similarity_fn_names, name=name,
                         show_progress_bar=show_progress_bar, write_csv=write_csv)

    def _append_csv_headers(self, similarity_fn_names):
        super()._append_csv_headers(similarity_fn_names)
        if similarity_fn_names:  # with the function columns, which may only be known at the first call
            self.csv_headers.extend(["active_dims", "sparsity_ratio"])
