"""SparseInformationRetrievalEvaluator: the dense IR evaluator on SPLADE embeddings, plus sparsity and FLOPS.

The corpus is encoded ``corpus_chunk_size`` documents at a time into ``scipy.sparse`` rows (host memory ~ the
non-zeros); each chunk is densified one device block at a time (at most ``_BLOCK_ELEMENTS`` floats, i.e. a few
thousand vocabulary-wide rows) and merged into the dense evaluator's running top-k on device
(``ChunkedTopK``), so neither the corpus nor a whole chunk is ever dense. The queries are dense on device,
``[Q, V]``, as the dense evaluator holds them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse

from stcore_jax.sentence_transformer.evaluation.information_retrieval import InformationRetrievalEvaluator
from stcore_jax.similarity import SimilarityFunction
from stcore_jax.sparse_encoder.embeddings import to_dense
from stcore_jax.sparse_encoder.evaluation.sparsity import (
    SparsityMixin,
    average_flops,
    count_vector,
    sparsity,
    weighted_mean,
)

_BLOCK_ELEMENTS = 1 << 27  # floats in one dense device block of corpus rows (512 MiB)
SPARSE_IR_HEADERS = ["query_active_dims", "query_sparsity_ratio", "corpus_active_dims", "corpus_sparsity_ratio",
                     "avg_flops"]


def _as_rows(embeddings):
    """``scipy.sparse`` rows stay sparse (a torch sparse tensor becomes one); anything else: dense numpy."""
    if scipy.sparse.issparse(embeddings):
        return embeddings.tocsr()
    if type(embeddings).__module__.startswith("torch") and getattr(embeddings, "is_sparse", False):
        coo = embeddings.coalesce()
        row, col = coo.indices().numpy()
        return scipy.sparse.csr_matrix((coo.values().numpy(), (row, col)), shape=tuple(coo.shape))
    return np.atleast_2d(to_dense(embeddings))


class SparseInformationRetrievalEvaluator(SparsityMixin, InformationRetrievalEvaluator):
    """Retrieve ``relevant_docs`` for ``queries`` from ``corpus`` with a :class:`~stcore_jax.SparseEncoder`.

    Arguments as sentence-transformers 6.2's ``SparseInformationRetrievalEvaluator`` (``max_active_dims``: top-k
    dimensions per embedding, ``None`` keeps the model's), plus ``query_chunk_size`` (see the dense evaluator).
    Queries use ``encode_query``, the corpus ``encode_document``. Metrics: the dense evaluator's
    ``{fn}_accuracy@k`` ... ``{fn}_map@k`` (``fn`` the model's similarity, ``dot`` by default), then
    ``query_active_dims``, ``query_sparsity_ratio``, ``corpus_active_dims``, ``corpus_sparsity_ratio`` (corpus
    chunks weighted by their length) and ``avg_flops`` = ``sum_v p_q(v) p_d(v)``, ``p(v)`` the fraction of
    queries / documents with dimension ``v`` active. Primary metric ``{fn}_ndcg@{max k}``.
    """

    def __init__(
        self,
        queries: dict[str, str],
        corpus: dict[str, str],
        relevant_docs: dict[str, set[str]],
        corpus_chunk_size: int = 50000,
        mrr_at_k: Sequence[int] = (10,),
        ndcg_at_k: Sequence[int] = (10,),
        accuracy_at_k: Sequence[int] = (1, 3, 5, 10),
        precision_recall_at_k: Sequence[int] = (1, 3, 5, 10),
        map_at_k: Sequence[int] = (100,),
        show_progress_bar: bool = False,
        batch_size: int = 32,
        name: str = "",
        write_csv: bool = True,
        max_active_dims: int | None = None,
        score_functions: dict[str, Callable] | None = None,
        main_score_function: str | SimilarityFunction | None = None,
        query_prompt: str | None = None,
        query_prompt_name: str | None = None,
        corpus_prompt: str | None = None,
        corpus_prompt_name: str | None = None,
        write_predictions: bool = False,
        query_chunk_size: int = 1024,
    ) -> None:
        self.max_active_dims = max_active_dims
        self.reset_sparsity()
        super().__init__(
            queries=queries, corpus=corpus, relevant_docs=relevant_docs, corpus_chunk_size=corpus_chunk_size,
            mrr_at_k=mrr_at_k, ndcg_at_k=ndcg_at_k, accuracy_at_k=accuracy_at_k,
            precision_recall_at_k=precision_recall_at_k, map_at_k=map_at_k, show_progress_bar=show_progress_bar,
            batch_size=batch_size, name=name, write_csv=write_csv, score_functions=score_functions,
            main_score_function=main_score_function, query_prompt=query_prompt, query_prompt_name=query_prompt_name,
            corpus_prompt=corpus_prompt, corpus_prompt_name=corpus_prompt_name, write_predictions=write_predictions,
            query_chunk_size=query_chunk_size,
        )

    def reset_sparsity(self) -> None:
        # Per side: the statistics of each encoded block, the summed count vectors and the block lengths.
        self.sparsity_stats = {"query": defaultdict(list), "corpus": defaultdict(list)}
        self.count_vectors = {}
        self.count_lengths = {"query": [], "corpus": []}

    def _append_csv_headers(self, score_function_names):
        super()._append_csv_headers(score_function_names)
        if score_function_names:  # added once, with the score-function columns they follow
            self.csv_headers.extend(SPARSE_IR_HEADERS)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args, **kwargs):
        self.reset_sparsity()
        metrics = super().__call__(model, output_path, epoch, steps, *args, **kwargs)
        stats = {}
        for side in ("query", "corpus"):
            for key, values in self.sparsity_stats[side].items():
                # The queries come in one block; corpus chunks are weighted by their length.
                stats[f"{side}_{key}"] = (sum(values) / len(values) if side == "query"
                                          else weighted_mean(values, self.count_lengths[side]))
        stats["avg_flops"] = self._calculate_avg_flops()
        return self.report_sparsity(model, metrics, stats, output_path, epoch, steps)

    def compute_all_metrics(self, model, corpus_model=None, corpus_embeddings=None, output_path: str | None = None,
                            query_embeddings=None):
        """As the dense evaluator's; precomputed ``[C, V]`` / ``[Q, V]`` embeddings (dense, ``scipy.sparse`` or
        torch sparse) are counted in the sparsity statistics and densified for the search."""
        if corpus_embeddings is not None:
            corpus_embeddings = _as_rows(corpus_embeddings)
            self._record_sparsity_stats(corpus_embeddings, "corpus")
            corpus_embeddings = to_dense(corpus_embeddings)
        if query_embeddings is not None:
            query_embeddings = _as_rows(query_embeddings)
            self._record_sparsity_stats(query_embeddings, "query")
        return super().compute_all_metrics(model, corpus_model=corpus_model, corpus_embeddings=corpus_embeddings,
                                           output_path=output_path, query_embeddings=query_embeddings)

    def _search_and_score(self, query_embeddings, corpus_chunks, output_path=None, corpus_block_rows=None):
        queries = np.atleast_2d(to_dense(query_embeddings)).astype(np.float32)
        block = corpus_block_rows or max(1, min(self.corpus_chunk_size, _BLOCK_ELEMENTS // max(queries.shape[1], 1)))

        def dense_blocks():
            for chunk in corpus_chunks:
                for start in range(0, chunk.shape[0], block):
                    yield np.atleast_2d(to_dense(chunk[start : start + block])).astype(np.float32)

        return super()._search_and_score(queries, dense_blocks(), output_path, corpus_block_rows=block)

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, prompt_name: str | None = None,
                     prompt: str | None = None, **kwargs):
        """``scipy.sparse.csr_matrix [N, V]`` from ``encode_query`` / ``encode_document`` / ``encode``."""
        embeddings = self.encode_sparse(model, sentences, encode_fn_name, sparse=True, prompt_name=prompt_name,
                                        prompt=prompt, **kwargs)
        self._record_sparsity_stats(embeddings, "query" if encode_fn_name in ("query", None) else "corpus")
        return embeddings

    def _record_sparsity_stats(self, embeddings, side: str) -> None:
        for key, value in sparsity(embeddings).items():
            self.sparsity_stats[side][key].append(value)
        counts = count_vector(embeddings)
        self.count_vectors[side] = counts if side not in self.count_vectors else self.count_vectors[side] + counts
        self.count_lengths[side].append(embeddings.shape[0])

    def _calculate_avg_flops(self) -> float:
        """Expected FLOPS of a query-document dot product over everything encoded in this call (0 if a side is
        missing)."""
        if "query" not in self.count_vectors or "corpus" not in self.count_vectors:
            return 0.0
        return average_flops(self.count_vectors["query"], sum(self.count_lengths["query"]),
                             self.count_vectors["corpus"], sum(self.count_lengths["corpus"]))
