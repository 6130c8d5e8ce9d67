"""SparseMSEEvaluator: the dense teacher-student MSE evaluator on SPLADE embeddings, plus sparsity."""

from __future__ import annotations

from stcore_jax.sentence_transformer.evaluation.mse import MSEEvaluator
from stcore_jax.sparse_encoder.evaluation.sparsity import PooledSparsityMixin


class SparseMSEEvaluator(PooledSparsityMixin, MSEEvaluator):
    """``negative_mse = -100 * mean((teacher.encode(source) - model.encode(target))^2)`` over ``[N, V]``.

    Arguments as sentence-transformers 6.2's ``SparseMSEEvaluator``; ``max_active_dims`` (top-k dimensions per
    embedding, ``None`` keeps each model's) applies to the teacher too, whose embeddings are computed once, at
    construction. Metrics: ``negative_mse`` (primary), then the student's ``active_dims`` and
    ``sparsity_ratio``. Both sides are held dense, ``[N, V]``.
    """

    def __init__(
        self,
        source_sentences: list[str],
        target_sentences: list[str],
        teacher_model=None,
        show_progress_bar: bool = False,
        batch_size: int = 32,
        name: str = "",
        write_csv: bool = True,
        max_active_dims: int | None = None,
    ):
        self.max_active_dims = max_active_dims
        self.reset_sparsity()
        super().__init__(source_sentences=source_sentences, target_sentences=target_sentences,
                         teacher_model=teacher_model, show_progress_bar=show_progress_bar, batch_size=batch_size,
                         name=name, write_csv=write_csv)
        self.csv_headers.extend(["active_dims", "sparsity_ratio"])
