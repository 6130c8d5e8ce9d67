"""SparseBinaryClassificationEvaluator: the dense pair-classification evaluator on SPLADE embeddings, plus
sparsity."""

from __future__ import annotations

from typing import Literal

from stcore_jax.sentence_transformer.evaluation.binary_classification import BinaryClassificationEvaluator
from stcore_jax.sparse_encoder.evaluation.sparsity import PooledSparsityMixin


class SparseBinaryClassificationEvaluator(PooledSparsityMixin, BinaryClassificationEvaluator):
    """Accuracy, F1, precision, recall, AP and MCC of thresholded pair similarities (``labels`` 0/1).

    Arguments as sentence-transformers 6.2's ``SparseBinaryClassificationEvaluator`` (``max_active_dims``: top-k
    dimensions per embedding, ``None`` keeps the model's). Metrics: the dense evaluator's ``{fn}_*`` (``fn`` the
    model's similarity, ``dot`` by default), then ``active_dims`` and ``sparsity_ratio`` over the distinct
    sentences (each is encoded once). Primary metric ``{fn}_ap`` (``max_ap`` for several functions).
    """

    def __init__(
        self,
        sentences1: list[str],
        sentences2: list[str],
        labels: list[int],
        name: str = "",
        batch_size: int = 32,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        max_active_dims: int | None = None,
        similarity_fn_names: list[Literal["cosine", "dot", "euclidean", "manhattan"]] | None = None,
    ):
        self.max_active_dims = max_active_dims
        self.reset_sparsity()
        super().__init__(sentences1=sentences1, sentences2=sentences2, labels=labels, name=name,
                         batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv,
                         similarity_fn_names=similarity_fn_names)

    def _append_csv_headers(self, similarity_fn_names):
        super()._append_csv_headers(similarity_fn_names)
        if similarity_fn_names:
            self.csv_headers.extend(["active_dims", "sparsity_ratio"])
