"""ParaphraseMiningEvaluator: mine the most similar sentence pairs and score them against known duplicates."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, embed, epoch_text
from stcore_jax.similarity import cos_sim
from stcore_jax.util.semantic_search import _rows, top_k_search

logger = logging.getLogger(__name__)


def paraphrase_mining_embeddings(
    embeddings,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable = cos_sim,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The highest-scoring pairs ``i < j`` among each sentence's ``top_k`` neighbours.

    Each sentence keeps its ``top_k`` nearest other sentences (exact chunked search on device);
    pairs are deduplicated (a pair found from both ends keeps the score of the first query that
    found it, as in the reference) and the ``max_pairs`` best are returned.

    Returns:
      ``(scores, i, j)`` numpy arrays sorted by descending score (ties by ascending ``(i, j)``).
    """
    emb = _rows(embeddings)
    n = emb.shape[0]
    scores, idx = top_k_search(
        emb,
        emb,
        top_k + 1,
        score_function=score_function,
        query_chunk_size=query_chunk_size,
        corpus_chunk_size=corpus_chunk_size,
    )
    query = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    not_self = idx != query
    # Drop the query itself, then keep the first top_k neighbours of each row.
    keep = not_self & (np.cumsum(not_self, axis=1) <= top_k)
    s, a, b = scores[keep].astype(np.float64), query[keep], idx[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(lo * n + hi, return_index=True)
    s, lo, hi = s[first], lo[first], hi[first]
    # Keep the best max_pairs; among equal scores the reference's min-heap evicts the smaller (i, j).
    order = np.lexsort((-hi, -lo, -s))[:max_pairs]
    s, lo, hi = s[order], lo[order], hi[order]
    order = np.lexsort((hi, lo, -s))
    return s[order], lo[order], hi[order]


class ParaphraseMiningEvaluator(SentenceEvaluator):
    """Average precision, F1, precision, recall and threshold of mined pairs vs. known duplicates.

    Same arguments as sentence-transformers 6.2: ``sentences_map {id: sentence}``, duplicates as
    ``duplicates_list [(id1, id2)]`` or a symmetric ``duplicates_dict[id1][id2] = True``,
    ``add_transitive_closure``, the chunk sizes, ``max_pairs`` and ``top_k``. Primary metric:
    ``average_precision``.
    """

    def __init__(
        self,
        sentences_map: dict[str, str],
        duplicates_list: list[tuple[str, str]] | None = None,
        duplicates_dict: dict[str, dict[str, bool]] | None = None,
        add_transitive_closure: bool = False,
        query_chunk_size: int = 5000,
        corpus_chunk_size: int = 100000,
        max_pairs: int = 500000,
        top_k: int = 100,
        show_progress_bar: bool = False,
        batch_size: int = 16,
        name: str = "",
        write_csv: bool = True,
        truncate_dim: int | None = None,
    ):
        super().__init__()
        self.ids = list(sentences_map.keys())
        self.sentences = [sentences_map[i] for i in self.ids]
        self.name = name
        self.show_progress_bar = show_progress_bar
        self.batch_size = batch_size
        self.query_chunk_size = query_chunk_size
        self.corpus_chunk_size = corpus_chunk_size
        self.max_pairs = max_pairs
        self.top_k = top_k
        self.truncate_dim = truncate_dim
        self._add_transitive_closure = add_transitive_closure
        self.duplicates = duplicates_dict if duplicates_dict is not None else defaultdict(lambda: defaultdict(bool))
        if duplicates_list is not None:
            for id1, id2 in duplicates_list:
                if id1 in sentences_map and id2 in sentences_map:
                    self.duplicates[id1][id2] = True
                    self.duplicates[id2][id1] = True
        if add_transitive_closure:
            self.duplicates = self.add_transitive_closure(self.duplicates)

        # Positive pairs as (i, j) row indices, i < j.
        row = {sid: i for i, sid in enumerate(self.ids)}
        positives = set()
        for key1, targets in self.duplicates.items():
            for key2, is_dup in targets.items():
                if key1 in row and key2 in row and (is_dup or self.duplicates.get(key2, {}).get(key1, False)):
                    positives.add((min(row[key1], row[key2]), max(row[key1], row[key2])))
        self._positive_keys = np.asarray(sorted(i * len(self.ids) + j for i, j in positives), np.int64)
        self.total_num_duplicates = len(positives)

        suffix = f"_{name}" if name else ""
        self.csv_file = f"paraphrase_mining_evaluation{suffix}_results.csv"
        self.csv_headers = ["epoch", "steps", "precision", "recall", "f1", "threshold", "average_precision"]
        self.write_csv = write_csv
        self.primary_metric = "average_precision"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        when = epoch_text(epoch, steps, self.truncate_dim)
        logger.info(f"Paraphrase Mining Evaluation of the model on the {self.name} dataset{when}:")
        embeddings = embed(
            model,
            self.sentences,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            truncate_dim=self.truncate_dim,
        )
        metrics = self.compute_metrics_from_embeddings(embeddings)
        if output_path is not None and self.write_csv:
            row = [metrics[k] for k in ("precision", "recall", "f1", "threshold", "average_precision")]
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *row])
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def compute_metrics_from_embeddings(self, embeddings) -> dict[str, float]:
        """``{"average_precision", "f1", "precision", "recall", "threshold"}`` from ``[N, D]`` embeddings."""
        scores, i, j = paraphrase_mining_embeddings(
            embeddings,
            query_chunk_size=self.query_chunk_size,
            corpus_chunk_size=self.corpus_chunk_size,
            max_pairs=self.max_pairs,
            top_k=self.top_k,
        )
        logger.info(f"Number of candidate pairs: {len(scores)}")
        is_dup = np.isin(i * len(self.ids) + j, self._positive_keys)
        total = self.total_num_duplicates
        ap = f1 = precision = recall = threshold = 0.0
        if len(scores):
            ends = np.flatnonzero(np.concatenate([scores[1:] != scores[:-1], [True]]))
            correct = np.cumsum(is_dup)[ends]
            previous = np.concatenate([[0], correct[:-1]])
            gained = correct > previous
            group_precision = correct / (ends + 1)
            group_recall = correct / total if total > 0 else np.zeros_like(group_precision)
            with np.errstate(invalid="ignore", divide="ignore"):
                group_f1 = 2 * group_precision * group_recall / (group_precision + group_recall)
            group_f1 = np.where(gained, np.nan_to_num(group_f1), 0.0)
            ap = float(np.sum(np.where(gained, group_precision * (correct - previous), 0.0)))
            ap = ap / total if total > 0 else 0.0
            best = int(np.argmax(group_f1))
            if group_f1[best] > 0:
                f1, precision, recall = float(group_f1[best]), float(group_precision[best]), float(group_recall[best])
                e = ends[best]
                threshold = float((scores[e] + scores[min(e + 1, len(scores) - 1)]) / 2)
        logger.info(f"Average Precision: {ap * 100:.2f}")
        logger.info(f"Optimal threshold: {threshold:.4f}")
        logger.info(f"Precision: {precision * 100:.2f}")
        logger.info(f"Recall: {recall * 100:.2f}")
        logger.info(f"F1: {f1 * 100:.2f}\n")
        return {"average_precision": ap, "f1": f1, "precision": precision, "recall": recall, "threshold": threshold}

    @staticmethod
    def add_transitive_closure(graph):
        """Mark every pair inside each connected component of duplicates as duplicates."""
        visited = set()
        for a in list(graph.keys()):
            if a in visited:
                continue
            component = {a}
            queue = [node for node, is_dup in graph[a].items() if is_dup]
            while queue:
                node = queue.pop(0)
                if node not in component:
                    component.add(node)
                    queue.extend(n for n, is_dup in graph[node].items() if is_dup)
            component = list(component)
            for x in range(len(component) - 1):
                for y in range(x + 1, len(component)):
                    graph[component[x]][component[y]] = True
                    graph[component[y]][component[x]] = True
                    visited.update((component[x], component[y]))
        return graph

    def get_config_dict(self):
        config = {
            "add_transitive_closure": self._add_transitive_closure,
            "max_pairs": self.max_pairs,
            "top_k": self.top_k,
        }
        if self.truncate_dim is not None:
            config["truncate_dim"] = self.truncate_dim
        return config
