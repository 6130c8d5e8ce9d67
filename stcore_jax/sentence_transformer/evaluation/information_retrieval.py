"""InformationRetrievalEvaluator: retrieve from a corpus and score accuracy/precision/recall/MRR/NDCG/MAP@k.

Retrieval is exact and chunked (``stcore_jax.util.semantic_search.ChunkedTopK``): the corpus is
encoded ``corpus_chunk_size`` documents at a time, in ascending corpus-id order, and each chunk is
merged on device into a running ``[num_queries, max_k]`` top-k; the full query x corpus score
matrix never exists. Searching in id order makes ties resolve as in the reference, by
``(-score, corpus_id)``. ``compute_metrics_from_embeddings`` evaluates precomputed embeddings.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stcore_jax.base.evaluation.evaluator import (
    SentenceEvaluator,
    append_plain_csv_row,
    embed,
    epoch_text,
    similarity_name,
)
from stcore_jax.similarity import SimilarityFunction
from stcore_jax.util.semantic_search import ChunkedTopK, _rows

logger = logging.getLogger(__name__)


class InformationRetrievalEvaluator(SentenceEvaluator):
    """Evaluate retrieval of ``relevant_docs`` for ``queries`` from ``corpus``.

    Same arguments as sentence-transformers 6.2 (``queries {qid: text}``, ``corpus {cid: text}``,
    ``relevant_docs {qid: set(cid)}``, the ``*_at_k`` lists, prompts, ``score_functions``,
    ``main_score_function``, ``write_predictions``), plus ``query_chunk_size`` (queries per device
    block, default 1024). ``score_functions`` maps names to JAX-traceable ``f(a [Q, D], b [C, D])
    -> [Q, C]`` (the stcore_jax / sentence-transformers built-ins are recognised and run as
    memory-friendly blocks); by default the model's ``similarity_fn_name`` is used, resolved on
    every call. Metric keys: ``{fn}_accuracy@k``, ``{fn}_precision@k``, ``{fn}_recall@k``,
    ``{fn}_mrr@k``, ``{fn}_ndcg@k``, ``{fn}_map@k``; primary ``{best fn}_ndcg@{max k}``.
    """

    def __init__(
        self,
        queries: dict[str, Any],
        corpus: dict[str, Any],
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
        truncate_dim: int | None = None,
        score_functions: dict[str, Callable] | None = None,
        main_score_function: str | SimilarityFunction | None = None,
        query_prompt: str | None = None,
        query_prompt_name: str | None = None,
        corpus_prompt: str | None = None,
        corpus_prompt_name: str | None = None,
        write_predictions: bool = False,
        query_chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        # One id given as a string would be iterated as characters (none of them a corpus id: recall 0).
        relevant_docs = {q: {d} if isinstance(d, str) else d for q, d in relevant_docs.items()}
        self.queries_ids = [qid for qid in queries if qid in relevant_docs and len(relevant_docs[qid]) > 0]
        self.queries = [queries[qid] for qid in self.queries_ids]
        self.corpus_ids = list(corpus.keys())
        self.corpus = [corpus[cid] for cid in self.corpus_ids]
        # Corpus positions in ascending id order: the search order, so ties break by corpus id.
        self._id_order = np.asarray(sorted(range(len(self.corpus_ids)), key=self.corpus_ids.__getitem__), np.int64)
        self.query_prompt = query_prompt
        self.query_prompt_name = query_prompt_name
        self.corpus_prompt = corpus_prompt
        self.corpus_prompt_name = corpus_prompt_name
        self.relevant_docs = relevant_docs
        self.corpus_chunk_size = corpus_chunk_size
        self.query_chunk_size = query_chunk_size
        self.mrr_at_k = mrr_at_k
        self.ndcg_at_k = ndcg_at_k
        self.accuracy_at_k = accuracy_at_k
        self.precision_recall_at_k = precision_recall_at_k
        self.map_at_k = map_at_k
        self.show_progress_bar = show_progress_bar
        self.batch_size = batch_size
        self.name = name
        self.write_csv = write_csv
        self.score_functions = score_functions
        self.score_function_names = sorted(score_functions) if score_functions else []
        self._score_functions_from_model = score_functions is None
        self.main_score_function = SimilarityFunction(main_score_function) if main_score_function else None
        self.truncate_dim = truncate_dim
        suffix = f"_{name}" if name else ""
        self.csv_file = f"Information-Retrieval_evaluation{suffix}_results.csv"
        self.csv_headers = ["epoch", "steps"]
        self._append_csv_headers(self.score_function_names)
        self.write_predictions = write_predictions
        if write_predictions:
            self.predictions_file = f"Information-Retrieval_evaluation{suffix}_predictions.jsonl"

    def _append_csv_headers(self, score_function_names):
        for fn in score_function_names:
            self.csv_headers += [f"{fn}-Accuracy@{k}" for k in self.accuracy_at_k]
            for k in self.precision_recall_at_k:
                self.csv_headers += [f"{fn}-Precision@{k}", f"{fn}-Recall@{k}"]
            self.csv_headers += [f"{fn}-MRR@{k}" for k in self.mrr_at_k]
            self.csv_headers += [f"{fn}-NDCG@{k}" for k in self.ndcg_at_k]
            self.csv_headers += [f"{fn}-MAP@{k}" for k in self.map_at_k]

    def _model_score_functions(self, model) -> dict[str, Callable]:
        name = similarity_name(model)
        return {name: SimilarityFunction.to_similarity_fn(name)}

    @property
    def max_k(self) -> int:
        return max(*self.mrr_at_k, *self.ndcg_at_k, *self.accuracy_at_k, *self.precision_recall_at_k, *self.map_at_k)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args, **kwargs):
        logger.info(
            f"Information Retrieval Evaluation of the model on the {self.name} dataset"
            f"{epoch_text(epoch, steps, self.truncate_dim)}:"
        )
        headers_changed = False
        if self._score_functions_from_model:
            self.score_functions = self._model_score_functions(model)
            if self.score_function_names != sorted(self.score_functions):
                headers_changed = bool(self.score_function_names)
                self.score_function_names = sorted(self.score_functions)
                self.csv_headers = ["epoch", "steps"]
                self._append_csv_headers(self.score_function_names)
                self.primary_metric = None

        scores = self.compute_all_metrics(model, *args, output_path=output_path, **kwargs)

        if output_path is not None and self.write_csv:
            if headers_changed and os.path.isfile(os.path.join(output_path, self.csv_file)):
                logger.warning(f"{self.csv_file} was written with different score function columns.")
            row = [epoch, steps]
            for fn in self.score_function_names:
                row += [scores[fn]["accuracy@k"][k] for k in self.accuracy_at_k]
                for k in self.precision_recall_at_k:
                    row += [scores[fn]["precision@k"][k], scores[fn]["recall@k"][k]]
                row += [scores[fn]["mrr@k"][k] for k in self.mrr_at_k]
                row += [scores[fn]["ndcg@k"][k] for k in self.ndcg_at_k]
                row += [scores[fn]["map@k"][k] for k in self.map_at_k]
            append_plain_csv_row(output_path, self.csv_file, self.csv_headers, row)

        if not self.primary_metric:
            top = max(self.ndcg_at_k)
            if self.main_score_function is None:
                best = max(self.score_function_names, key=lambda fn: scores[fn]["ndcg@k"][top])
                self.primary_metric = f"{best}_ndcg@{top}"
            else:
                self.primary_metric = f"{self.main_score_function.value}_ndcg@{top}"

        metrics = {
            f"{fn}_{metric.replace('@k', '@' + str(k))}": value
            for fn, per_metric in scores.items()
            for metric, per_k in per_metric.items()
            for k, value in per_k.items()
        }
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def compute_all_metrics(
        self,
        model,
        corpus_model=None,
        corpus_embeddings=None,
        output_path: str | None = None,
        query_embeddings=None,
    ) -> dict[str, dict[str, dict[int, float]]]:
        """Encode (unless given) and search; returns ``{fn: {"accuracy@k": {k: value}, …}}``.

        ``corpus_embeddings`` / ``query_embeddings`` are ``[C, D]`` / ``[Q, D]`` arrays in the order of
        ``self.corpus`` / ``self.queries``.
        """
        if query_embeddings is None:
            query_embeddings = self.embed_inputs(
                model,
                self.queries,
                encode_fn_name="query",
                prompt_name=self.query_prompt_name,
                prompt=self.query_prompt,
            )
        if self.score_functions is None:
            self.score_functions = self._model_score_functions(model)
            self.score_function_names = sorted(self.score_functions)
        corpus_model = model if corpus_model is None else corpus_model
        if corpus_embeddings is not None:
            corpus_embeddings = _rows(corpus_embeddings)

        def corpus_chunks():
            for start in range(0, len(self.corpus), self.corpus_chunk_size):
                positions = self._id_order[start : start + self.corpus_chunk_size]
                if corpus_embeddings is not None:
                    yield corpus_embeddings[positions]
                else:
                    yield self.embed_inputs(
                        corpus_model,
                        [self.corpus[p] for p in positions],
                        encode_fn_name="document",
                        prompt_name=self.corpus_prompt_name,
                        prompt=self.corpus_prompt,
                    )

        return self._search_and_score(query_embeddings, corpus_chunks(), output_path)

    compute_metrices = compute_all_metrics

    def compute_metrics_from_embeddings(self, query_embeddings, corpus_embeddings, score_functions=None):
        """Metrics for precomputed ``[Q, D]`` query and ``[C, D]`` corpus embeddings (no model).

        Rows follow ``self.queries`` / ``self.corpus``. ``score_functions`` defaults to the
        evaluator's, else cosine. Returns ``{fn: {"accuracy@k": {k: value}, …}}``.
        """
        if score_functions is not None:
            self.score_functions = score_functions
        elif self.score_functions is None:
            self.score_functions = {"cosine": SimilarityFunction.to_similarity_fn("cosine")}
        self.score_function_names = sorted(self.score_functions)
        return self.compute_all_metrics(None, query_embeddings=query_embeddings, corpus_embeddings=corpus_embeddings)

    def _search_and_score(self, query_embeddings, corpus_chunks, output_path=None, corpus_block_rows=None):
        """Search the fed corpus chunks; ``corpus_block_rows`` (default ``corpus_chunk_size``): corpus rows per
        device block (the sparse evaluator lowers it, its rows being vocabulary-wide)."""
        n_corpus = len(self.corpus)
        k = min(self.max_k, n_corpus)
        searches = {}
        if k > 0:
            searches = {
                fn: ChunkedTopK(
                    query_embeddings,
                    k,
                    score_function=score_fn,
                    query_chunk_size=self.query_chunk_size,
                    corpus_chunk_size=corpus_block_rows or self.corpus_chunk_size,
                    corpus_size=n_corpus,
                )
                for fn, score_fn in self.score_functions.items()
            }
        for chunk in corpus_chunks:
            for search in searches.values():
                search.add(chunk)

        scores = {}
        empty = np.zeros((len(self.queries), 0), np.float32), np.zeros((len(self.queries), 0), np.int64)
        for fn in self.score_functions:
            top_scores, top_pos = searches[fn].result() if k > 0 else empty
            if self.write_predictions and output_path is not None:
                self._write_predictions(output_path, fn, top_scores, top_pos)
            scores[fn] = self.compute_metrics_from_ranking(top_pos)
        logger.info(f"Queries: {len(self.queries)}")
        logger.info(f"Corpus: {len(self.corpus)}\n")
        for fn in self.score_function_names:
            logger.info(f"Score-Function: {fn}")
            self.output_scores(scores[fn])
        return scores

    def _relevance(self, top_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``relevant [Q, k]`` (is the hit relevant) and ``num_relevant [Q]`` from sorted-order positions."""
        rank_of = np.empty(len(self._id_order), np.int64)
        rank_of[self._id_order] = np.arange(len(self._id_order))
        cid_rank = {cid: rank_of[i] for i, cid in enumerate(self.corpus_ids)}
        n = max(len(self.corpus_ids), 1)
        relevant_keys, num_relevant = [], np.empty(len(self.queries_ids), np.float64)
        for q, qid in enumerate(self.queries_ids):
            docs = self.relevant_docs[qid]
            num_relevant[q] = len(docs)
            relevant_keys.extend(q * n + cid_rank[cid] for cid in docs if cid in cid_rank)
        hit_keys = np.arange(len(self.queries_ids))[:, None] * n + top_pos
        return np.isin(hit_keys, np.asarray(relevant_keys, np.int64)) & (top_pos >= 0), num_relevant

    def compute_metrics(self, queries_result_list: list[list[dict]]) -> dict[str, dict[int, float]]:
        """Metrics from per-query hit lists ``[{"corpus_id", "score"}, …]`` (the reference's format)."""
        rank_of = {self.corpus_ids[p]: r for r, p in enumerate(self._id_order.tolist())}
        width = max((len(hits) for hits in queries_result_list), default=0)
        top_pos = np.full((len(queries_result_list), width), -1, np.int64)
        for q, hits in enumerate(queries_result_list):
            ranked = sorted(hits, key=lambda hit: (-hit["score"], hit["corpus_id"]))
            top_pos[q, : len(ranked)] = [rank_of.get(hit["corpus_id"], -1) for hit in ranked]
        return self.compute_metrics_from_ranking(top_pos)

    def compute_metrics_from_ranking(self, top_pos: np.ndarray) -> dict[str, dict[int, float]]:
        """Metrics from ``top_pos [Q, k]``: each query's hits (positions in corpus-id order, ``-1`` for
        none), best first."""
        relevant, num_relevant = self._relevance(top_pos)
        num_queries = len(self.queries)
        hits = relevant.astype(np.float64)
        discount = 1.0 / np.log2(np.arange(hits.shape[1]) + 2)
        first_hit = np.full(len(relevant), np.iinfo(np.int64).max)
        if relevant.shape[1]:
            first_hit = np.where(relevant.any(1), relevant.argmax(1), first_hit)
        accuracy = {k: float(np.sum(relevant[:, :k].any(1))) / num_queries for k in self.accuracy_at_k}
        precision = {k: np.mean(hits[:, :k].sum(1) / k) for k in self.precision_recall_at_k}
        recall = {k: np.mean(hits[:, :k].sum(1) / num_relevant) for k in self.precision_recall_at_k}
        reciprocal_rank = 1.0 / (first_hit + 1.0)
        mrr = {k: float(np.sum(np.where(first_hit < k, reciprocal_rank, 0.0))) / num_queries for k in self.mrr_at_k}
        ndcg = {}
        for k in self.ndcg_at_k:
            dcg = (hits[:, :k] * discount[:k]).sum(1)
            ideal_discount = np.cumsum(1.0 / np.log2(np.arange(k) + 2))
            idcg = ideal_discount[np.minimum(num_relevant, k).astype(np.int64) - 1]
            ndcg[k] = np.mean(dcg / idcg)
        average_precision = {}
        for k in self.map_at_k:
            correct = np.cumsum(hits[:, :k], 1)
            ranks = np.arange(1, correct.shape[1] + 1)
            sum_precisions = (hits[:, :k] * correct / ranks).sum(1)
            average_precision[k] = np.mean(sum_precisions / np.minimum(k, num_relevant))
        return {
            "accuracy@k": accuracy,
            "precision@k": precision,
            "recall@k": recall,
            "ndcg@k": ndcg,
            "mrr@k": mrr,
            "map@k": average_precision,
        }

    def _write_predictions(self, output_path, fn, top_scores, top_pos):
        os.makedirs(output_path, exist_ok=True)
        path = os.path.join(output_path, self.predictions_file.replace(".jsonl", f"_{fn}.jsonl"))
        with open(path, mode="w", encoding="utf-8") as f:
            for q, qid in enumerate(self.queries_ids):
                results = [
                    {"corpus_id": self.corpus_ids[self._id_order[p]], "score": s}
                    for p, s in zip(top_pos[q].tolist(), top_scores[q].tolist())
                ]
                f.write(json.dumps({"query_id": qid, "query": self.queries[q], "results": results}) + "\n")

    def output_scores(self, scores):
        for k, v in scores["accuracy@k"].items():
            logger.info(f"Accuracy@{k}: {v * 100:.2f}%")
        for k, v in scores["precision@k"].items():
            logger.info(f"Precision@{k}: {v * 100:.2f}%")
        for k, v in scores["recall@k"].items():
            logger.info(f"Recall@{k}: {v * 100:.2f}%")
        for k, v in scores["mrr@k"].items():
            logger.info(f"MRR@{k}: {v:.4f}")
        for k, v in scores["ndcg@k"].items():
            logger.info(f"NDCG@{k}: {v:.4f}")
        for k, v in scores["map@k"].items():
            logger.info(f"MAP@{k}: {v:.4f}")

    @staticmethod
    def compute_dcg_at_k(relevances, k):
        return sum(relevances[i] / np.log2(i + 2) for i in range(min(len(relevances), k)))

    def embed_inputs(
        self,
        model,
        sentences: Sequence[Any],
        encode_fn_name: str | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        **kwargs,
    ) -> np.ndarray:
        return embed(
            model,
            sentences,
            kind=encode_fn_name,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            truncate_dim=self.truncate_dim,
            prompt_name=prompt_name,
            prompt=prompt,
            **kwargs,
        )

    def get_config_dict(self):
        keys = ("truncate_dim", "query_prompt", "query_prompt_name", "corpus_prompt", "corpus_prompt_name")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}
