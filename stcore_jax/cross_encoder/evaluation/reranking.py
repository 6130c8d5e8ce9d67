"""CrossEncoderRerankingEvaluator: MRR@k, NDCG@k and MAP of ``predict`` scores over each query's documents."""

from __future__ import annotations

import logging

import numpy as np

from stcore_jax.base.evaluation import metrics as _metrics
from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, epoch_text
from stcore_jax.cross_encoder.evaluation._common import predict_scores

logger = logging.getLogger(__name__)


def ndcg_at_k(y_true, y_score, k: int) -> float:
    """``sklearn.metrics.ndcg_score([y_true], [y_score], k=k)`` (default ``ignore_ties=False``).

    ``y_true``, ``y_score``: ``[D]``. Documents with equal scores share the mean of their gains over the
    positions they span (sklearn's tie averaging); the ideal DCG sorts ``y_true``; 0 when it is 0.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score)
    if len(y_true) <= 1:  # sklearn refuses these; so does the reference
        raise ValueError(f"Computing NDCG is only meaningful when there is more than 1 document. Got {len(y_true)} "
                         "instead.")
    discount = 1 / np.log2(np.arange(len(y_true)) + 2)
    discount[k:] = 0
    ideal = float(discount.dot(np.sort(y_true)[::-1]))
    if ideal == 0:
        return 0.0
    _, inv, counts = np.unique(-y_score, return_inverse=True, return_counts=True)
    group_gain = np.zeros(len(counts))
    np.add.at(group_gain, inv.ravel(), y_true)
    group_gain /= counts
    discount_cumsum = np.cumsum(discount)[np.cumsum(counts) - 1]  # discount summed up to each group's end
    return float(group_gain.dot(np.diff(discount_cumsum, prepend=0.0)) / ideal)


def rank_metrics(is_relevant, scores, at_k: int) -> tuple[float, float, float]:
    """(MRR@k, NDCG@k, AP) of one query: ``is_relevant`` ``[D]`` 0/1, ``scores`` ``[D]`` (higher = better).

    MRR ranks with ``np.argsort(scores)[::-1]`` as the reference does, so ties break the same way.
    """
    mrr = 0.0
    for rank, index in enumerate(np.argsort(scores)[::-1][:at_k]):
        if is_relevant[index]:
            mrr = 1 / (rank + 1)
            break
    return mrr, ndcg_at_k(is_relevant, scores, at_k), _metrics.average_precision(is_relevant, scores)


def _prepare(sample, always_rerank_positives: bool):
    """Validate one sample; return (positives, base relevance or None, docs to rerank, their relevance)."""
    if "query" not in sample:
        raise ValueError("CrossEncoderRerankingEvaluator requires a 'query' key in each sample.")
    if "positive" not in sample:
        raise ValueError("CrossEncoderRerankingEvaluator requires a 'positive' key in each sample.")
    if ("negative" in sample) == ("documents" in sample):
        raise ValueError("CrossEncoderRerankingEvaluator requires exactly one of 'negative' and 'documents' in each "
                         "sample.")
    positive = sample["positive"]
    positive = [positive] if isinstance(positive, str) else list(positive)
    documents = sample.get("documents")
    if not documents:  # the reference also takes this branch for an empty "documents" list
        negative = sample.get("negative")
        return positive, None, positive + negative, [1] * len(positive) + [0] * len(negative)
    base = [int(doc in positive) for doc in documents]
    if always_rerank_positives:
        docs = positive + [doc for doc in documents if doc not in positive]
        return positive, base, docs, [1] * len(positive) + [0] * (len(docs) - len(positive))
    return positive, base, documents, base


class CrossEncoderRerankingEvaluator(SentenceEvaluator):
    """Rerank each query's documents by ``model.predict([query, doc])`` and score the ranking.

    Metrics (means over queries; a query with no positive to rerank scores 0): ``map``, ``mrr@{at_k}``,
    ``ndcg@{at_k}`` (primary), and with ``documents`` samples also ``base_map``, ``base_mrr@{at_k}``,
    ``base_ndcg@{at_k}`` for the given document order (positives missing from it appended at its end),
    prefixed with ``{name}_`` when ``name`` is set. CSV: ``CrossEncoderRerankingEvaluator[_name]_results_@{at_k}.csv``
    with ``epoch, steps, MAP, MRR@{at_k}, NDCG@{at_k}`` (reranked values).

    Args:
      samples: dicts with ``query``, ``positive`` (a string or list) and exactly one of ``negative`` (list) or
        ``documents`` (a ranked list, positives possibly among them); a dict of such dicts is taken by value.
      at_k: cutoff of MRR and NDCG (MAP has none).
      always_rerank_positives: with ``documents``, rerank all positives (put first) rather than only those present.
      name: prefix of the metric keys and the CSV file name.
      prompt_name: key of ``model.prompts`` passed to ``predict``.
      batch_size: ``predict`` batch size.
      show_progress_bar: passed to ``predict``.
      write_csv: append a row to the CSV when ``output_path`` is given.
      mrr_at_k: deprecated alias of ``at_k`` (wins when set).
    """

    def __init__(
        self,
        samples: list[dict[str, str | list[str]]],
        at_k: int = 10,
        always_rerank_positives: bool = True,
        name: str = "",
        prompt_name: str | None = None,
        batch_size: int = 64,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        mrr_at_k: int | None = None,
    ):
        super().__init__()
        self.samples = list(samples.values()) if isinstance(samples, dict) else samples
        if mrr_at_k is not None:
            logger.warning(f"The `mrr_at_k` parameter has been deprecated; please use `at_k={mrr_at_k}` instead.")
        self.at_k = mrr_at_k if mrr_at_k is not None else at_k
        self.always_rerank_positives = always_rerank_positives
        self.name = name
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.write_csv = write_csv
        self.csv_file = "CrossEncoderRerankingEvaluator" + ("_" + name if name else "") + f"_results_@{self.at_k}.csv"
        self.csv_headers = ["epoch", "steps", "MAP", f"MRR@{self.at_k}", f"NDCG@{self.at_k}"]
        self.primary_metric = f"ndcg@{self.at_k}"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(f"CrossEncoderRerankingEvaluator: Evaluating the model on the {self.name} dataset"
                    f"{epoch_text(epoch, steps)}:")
        base_scores, pairs, per_sample, n_pos, n_neg = [], [], [], [], []
        for sample in self.samples:
            positive, base, docs, is_relevant = _prepare(sample, self.always_rerank_positives)
            if base is not None:
                # The given order is the base ranking; absent positives count as ranked after every document.
                if sum(base) == 0:
                    base_scores.append((0, 0, 0))
                else:
                    base = base + [1] * (len(positive) - sum(base))
                    base_scores.append(rank_metrics(base, np.arange(len(base), 0, -1), self.at_k))
            n_pos.append(len(positive))
            n_neg.append(len(is_relevant) - sum(is_relevant))
            if sum(is_relevant) == 0:
                per_sample.append(None)
                continue
            per_sample.append(is_relevant)
            pairs.extend([sample["query"], doc] for doc in docs)
        # One batched predict over every (query, document) pair, split back per sample below.
        scores = predict_scores(model, pairs, prompt_name=self.prompt_name, batch_size=self.batch_size,
                                show_progress_bar=self.show_progress_bar) if pairs else np.array([])
        reranked, offset = [], 0
        for is_relevant in per_sample:
            if is_relevant is None:
                reranked.append((0, 0, 0))
                continue
            reranked.append(rank_metrics(is_relevant, scores[offset:offset + len(is_relevant)], self.at_k))
            offset += len(is_relevant)
        mrr, ndcg, ap = np.mean(reranked, axis=0)
        metrics = {"map": ap, f"mrr@{self.at_k}": mrr, f"ndcg@{self.at_k}": ndcg}
        logger.info(f"Queries: {len(self.samples)}\tPositives: Min {np.min(n_pos):.1f}, Mean {np.mean(n_pos):.1f}, "
                    f"Max {np.max(n_pos):.1f}\tNegatives: Min {np.min(n_neg):.1f}, Mean {np.mean(n_neg):.1f}, "
                    f"Max {np.max(n_neg):.1f}")
        pad = " " * len(str(self.at_k))
        if base_scores:
            base_mrr, base_ndcg, base_ap = np.mean(base_scores, axis=0)
            logger.info(f"{pad}       Base  -> Reranked")
            logger.info(f"MAP:{pad}   {base_ap * 100:.2f} -> {ap * 100:.2f}")
            logger.info(f"MRR@{self.at_k}:  {base_mrr * 100:.2f} -> {mrr * 100:.2f}")
            logger.info(f"NDCG@{self.at_k}: {base_ndcg * 100:.2f} -> {ndcg * 100:.2f}")
            card = {"map": f"{ap:.4f} ({ap - base_ap:+.4f})", f"mrr@{self.at_k}": f"{mrr:.4f} ({mrr - base_mrr:+.4f})",
                    f"ndcg@{self.at_k}": f"{ndcg:.4f} ({ndcg - base_ndcg:+.4f})"}
            self.store_metrics_in_model_card_data(model, self.prefix_name_to_metrics(card, self.name), epoch, steps)
            metrics.update({"base_map": base_ap, f"base_mrr@{self.at_k}": base_mrr,
                            f"base_ndcg@{self.at_k}": base_ndcg})
            metrics = self.prefix_name_to_metrics(metrics, self.name)
        else:
            logger.info(f"MAP:{pad}   {ap * 100:.2f}")
            logger.info(f"MRR@{self.at_k}:  {mrr * 100:.2f}")
            logger.info(f"NDCG@{self.at_k}: {ndcg * 100:.2f}")
            metrics = self.prefix_name_to_metrics(metrics, self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        if output_path is not None and self.write_csv:
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, ap, mrr, ndcg])
        return metrics

    def get_config_dict(self):
        config = {"at_k": self.at_k}
        if self.samples and "documents" in self.samples[0]:
            config["always_rerank_positives"] = self.always_rerank_positives
        return config
