"""SparseRerankingEvaluator: the dense reranking evaluator on SPLADE embeddings, plus query / document
sparsity."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stcore_jax.sentence_transformer.evaluation.reranking import RerankingEvaluator
from stcore_jax.similarity import cos_sim
from stcore_jax.sparse_encoder.evaluation.sparsity import SparsityMixin


class SparseRerankingEvaluator(SparsityMixin, RerankingEvaluator):
    """Rerank ``samples = [{"query", "positive": [...], "negative": [...]}]`` by ``similarity_fct`` (cosine by
    default, as in the reference); MAP, MRR@k and NDCG@k.

    Arguments as sentence-transformers 6.2's ``SparseRerankingEvaluator`` (``max_active_dims``: top-k dimensions
    per embedding, ``None`` keeps the model's). Queries use ``encode_query``, documents ``encode_document``.
    Metrics: ``map``, ``mrr@{at_k}``, ``ndcg@{at_k}`` (primary), then ``query_``/``corpus_`` ``active_dims``
    and ``sparsity_ratio`` (the mean over encode calls: one per side, or one per sample with
    ``use_batched_encoding=False``). The documents are held dense, ``[sum of documents, V]``.
    """

    def __init__(
        self,
        samples: list[dict],
        at_k: int = 10,
        name: str = "",
        write_csv: bool = True,
        similarity_fct: Callable = cos_sim,
        batch_size: int = 64,
        show_progress_bar: bool = False,
        use_batched_encoding: bool = True,
        max_active_dims: int | None = None,
        mrr_at_k: int | None = None,
    ):
        self.max_active_dims = max_active_dims
        self.reset_sparsity()
        super().__init__(samples=samples, at_k=at_k, name=name, write_csv=write_csv, similarity_fct=similarity_fct,
                         batch_size=batch_size, show_progress_bar=show_progress_bar,
                         use_batched_encoding=use_batched_encoding, mrr_at_k=mrr_at_k)
        self.csv_headers.extend(["query_active_dims", "query_sparsity_ratio", "corpus_active_dims",
                                 "corpus_sparsity_ratio"])

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        self.reset_sparsity()
        metrics = super().__call__(model, output_path, epoch, steps)
        return self.report_sparsity(model, metrics, None, output_path, epoch, steps)

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, **kwargs) -> np.ndarray:
        """Dense ``[N, V]`` from ``encode_query`` / ``encode_document`` / ``encode``."""
        embeddings = self.encode_sparse(model, sentences, encode_fn_name, **kwargs)
        self.record_sparsity(embeddings, "query_" if encode_fn_name in ("query", None) else "corpus_")
        return embeddings
