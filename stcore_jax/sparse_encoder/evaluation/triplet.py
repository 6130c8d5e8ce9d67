"""SparseTripletEvaluator: the dense triplet evaluator on SPLADE embeddings, plus sparsity per column."""

from __future__ import annotations

from typing import Literal

import numpy as np

from stcore_jax.sentence_transformer.evaluation.triplet import TripletEvaluator
from stcore_jax.similarity import SimilarityFunction
from stcore_jax.sparse_encoder.evaluation.sparsity import SparsityMixin

_COLUMNS = ("anchor", "positive", "negative")


class SparseTripletEvaluator(SparsityMixin, TripletEvaluator):
    """Accuracy of ``sim(anchor, positive) > sim(anchor, negative) + margin``.

    Arguments as sentence-transformers 6.2's ``SparseTripletEvaluator`` (``max_active_dims``: top-k dimensions
    per embedding, ``None`` keeps the model's). Anchors use ``encode_query``, positives and negatives
    ``encode_document``. Metrics: ``{fn}_accuracy`` (``fn`` the model's similarity, ``dot`` by default;
    ``max_accuracy`` for several), then ``anchor_``/``positive_``/``negative_`` ``active_dims`` and
    ``sparsity_ratio``. Primary metric ``{fn}_accuracy``.
    """

    def __init__(
        self,
        anchors: list[str],
        positives: list[str],
        negatives: list[str],
        main_similarity_function: str | SimilarityFunction | None = None,
        margin: float | dict[str, float] | None = None,
        name: str = "",
        batch_size: int = 16,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        max_active_dims: int | None = None,
        similarity_fn_names: list[Literal["cosine", "dot", "euclidean", "manhattan"]] | None = None,
        main_distance_function: str | SimilarityFunction | None = "deprecated",
    ):
        self.max_active_dims = max_active_dims
        self.reset_sparsity()
        super().__init__(anchors=anchors, positives=positives, negatives=negatives,
                         main_similarity_function=main_similarity_function, margin=margin, name=name,
                         batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv,
                         similarity_fn_names=similarity_fn_names, main_distance_function=main_distance_function)

    def _append_csv_headers(self, similarity_fn_names):
        super()._append_csv_headers(similarity_fn_names)
        if similarity_fn_names:
            self.csv_headers.extend(f"{column}_{key}" for column in _COLUMNS
                                    for key in ("active_dims", "sparsity_ratio"))

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        self.reset_sparsity()
        metrics = super().__call__(model, output_path, epoch, steps)
        return self.report_sparsity(model, metrics, None, output_path, epoch, steps)

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, **kwargs) -> np.ndarray:
        """Dense ``[N, V]``; the dense evaluator embeds anchors, positives, negatives in this order, so the
        number of columns recorded so far names the current one."""
        embeddings = self.encode_sparse(model, sentences, encode_fn_name, **kwargs)
        self.record_sparsity(embeddings, _COLUMNS[len(self.sparsity_stats) // 2] + "_")
        return embeddings
