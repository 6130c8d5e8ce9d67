"""SparseTranslationEvaluator: the dense translation-matching evaluator on SPLADE embeddings, plus sparsity."""

from __future__ import annotations

from stcore_jax.sentence_transformer.evaluation.translation import TranslationEvaluator
from stcore_jax.sparse_encoder.evaluation.sparsity import PooledSparsityMixin


class SparseTranslationEvaluator(PooledSparsityMixin, TranslationEvaluator):
    """``src2trg_accuracy``, ``trg2src_accuracy`` and ``mean_accuracy`` (primary) of top-1 cosine retrieval.

    Arguments as sentence-transformers 6.2's ``SparseTranslationEvaluator`` (``max_active_dims``: top-k
    dimensions per embedding, ``None`` keeps the model's). Metrics: the dense evaluator's, then
    ``active_dims`` and ``sparsity_ratio`` (the mean over the two sides).
    """

    def __init__(
        self,
        source_sentences: list[str],
        target_sentences: list[str],
        show_progress_bar: bool = False,
        batch_size: int = 16,
        name: str = "",
        print_wrong_matches: bool = False,
        write_csv: bool = True,
        max_active_dims: int | None = None,
    ):
        self.max_active_dims = max_active_dims
        self.reset_sparsity()
        super().__init__(source_sentences, target_sentences, show_progress_bar=show_progress_bar,
                         batch_size=batch_size, name=name, print_wrong_matches=print_wrong_matches,
                         write_csv=write_csv)
        self.csv_headers.extend(["active_dims", "sparsity_ratio"])
