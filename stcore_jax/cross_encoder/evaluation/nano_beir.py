"""CrossEncoderNanoBEIREvaluator: CrossEncoderRerankingEvaluator on the NanoBEIR datasets' BM25 top-k, and aggregates.

Each dataset's ``bm25`` subset (``query-id``, ``corpus-ids``: the corpus ids BM25 ranks best first) gives every
query's documents; its positives come from ``qrels``. ``dataset_id`` is a Hugging Face Hub id (network or cache) or,
offline, a local directory: a snapshot of the Hub repository, or one ``save_to_disk`` DatasetDict per subset
``corpus``, ``queries``, ``qrels``, ``bm25`` (see :mod:`stcore_jax.base.evaluation.nano_beir`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_plain_csv_row, epoch_text
from stcore_jax.base.evaluation.nano_beir import (
    DATASET_NAME_TO_HUMAN_READABLE,
    load_subset_split,
    validate_dataset_names,
)
from stcore_jax.cross_encoder.evaluation.reranking import CrossEncoderRerankingEvaluator

logger = logging.getLogger(__name__)

SUBSET_COLUMNS = {
    "corpus": ["_id", "text"],
    "queries": ["_id", "text"],
    "qrels": ["query-id", "corpus-id"],
    "bm25": ["query-id", "corpus-ids"],
}
# Argument retrieval differs meaningfully from the other tasks: the reference leaves these out by default.
NOT_BY_DEFAULT = ("arguana", "touche2020")


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _qrels_mapping(qrels) -> dict[Any, set]:
    """``query-id`` -> set of relevant ``corpus-id``s (a row's ``corpus-id`` may be one id or a list)."""
    mapping: dict[Any, set] = {}
    for row in qrels:
        ids = row.get("corpus-id")
        target = mapping.setdefault(row["query-id"], set())
        if isinstance(ids, list):
            target.update(ids)
        else:
            target.add(ids)
    return mapping


def build_samples(corpus, queries, qrels, bm25, rerank_k: int, where: str) -> list[dict[str, Any]]:
    """One reranking sample per ``bm25`` row: ``{"query", "positive": [texts], "documents": [≤ rerank_k texts]}``.

    Positives follow the iteration order of the query's qrels id set, as the reference's do (it matters only for
    exact score ties). ``where`` names the dataset in the ValueError for an id that a subset lacks.
    """
    corpus_text = dict(zip(corpus["_id"], corpus["text"]))
    query_text = dict(zip(queries["_id"], queries["text"]))
    relevant = _qrels_mapping(qrels)
    samples = []
    for row in bm25:
        query_id = row["query-id"]
        for subset, table in (("queries", query_text), ("qrels", relevant)):
            if query_id not in table:
                raise ValueError(f"{where}: query-id {query_id!r} of subset 'bm25' is not in subset '{subset}'.")
        positive_ids, document_ids = list(relevant[query_id]), list(row["corpus-ids"][:rerank_k])
        if missing := [i for i in positive_ids + document_ids if i not in corpus_text]:
            raise ValueError(f"{where}: corpus ids {missing[:5]} of query {query_id!r} (subsets 'qrels'/'bm25') are "
                             "not in subset 'corpus'.")
        samples.append({
            "query": query_text[query_id],
            "positive": [corpus_text[i] for i in positive_ids],
            "documents": [corpus_text[i] for i in document_ids],
        })
    return samples


class CrossEncoderNanoBEIREvaluator(SentenceEvaluator):
    """Rerank each NanoBEIR query's BM25 top ``rerank_k`` documents with the CrossEncoder and score the ranking.

    Mirrors ``sentence_transformers.cross_encoder.evaluation.CrossEncoderNanoBEIREvaluator`` (6.2). Metrics per
    dataset ``Nano{Name}_R{rerank_k}_{m}`` and aggregated with ``aggregate_fn`` as
    ``NanoBEIR_R{rerank_k}_{aggregate_key}_{m}``, for ``m`` in ``map``, ``mrr@{at_k}``, ``ndcg@{at_k}`` (primary)
    and the BM25 order's ``base_map``, ``base_mrr@{at_k}``, ``base_ndcg@{at_k}``. CSV
    ``NanoBEIR_evaluation_{aggregate_key}_results.csv`` (``epoch, steps, MAP, MRR@k, NDCG@k``) beside each dataset's
    CrossEncoderRerankingEvaluator CSV.

    Args:
      dataset_names: short names (``"msmarco"``, ``"nq"``, …, case-insensitive); None = all but arguana and touche2020.
      dataset_id: Hub id or local directory with subsets ``corpus``, ``queries``, ``qrels``, ``bm25`` and one split
        ``Nano{Name}`` per dataset.
      rerank_k: how many of BM25's ranked documents each query reranks.
      at_k: cutoff of MRR and NDCG.
      always_rerank_positives: rerank every positive, also those BM25 did not rank in its top ``rerank_k``.
      prompt_name: key of ``model.prompts`` passed to ``predict``.
      batch_size: ``predict`` batch size.
      show_progress_bar: progress over the datasets and in ``predict``.
      write_csv: append rows to the CSV files when ``output_path`` is given.
      aggregate_fn: reduces one metric's per-dataset values.
      aggregate_key: names the aggregate in keys and the CSV file.
    """

    def __init__(
        self,
        dataset_names: list[str] | None = None,
        dataset_id: str = "sentence-transformers/NanoBEIR-en",
        rerank_k: int = 100,
        at_k: int = 10,
        always_rerank_positives: bool = True,
        prompt_name: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        aggregate_fn: Callable[[list[float]], float] = np.mean,
        aggregate_key: str = "mean",
    ):
        super().__init__()
        if dataset_names is None:
            dataset_names = [name for name in DATASET_NAME_TO_HUMAN_READABLE if name not in NOT_BY_DEFAULT]
        self.dataset_names = dataset_names
        self.dataset_id = dataset_id
        _check_positive_int(rerank_k, "rerank_k")
        _check_positive_int(at_k, "at_k")
        self.rerank_k = rerank_k
        self.at_k = at_k
        self.always_rerank_positives = always_rerank_positives
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.write_csv = write_csv
        self.aggregate_fn = aggregate_fn
        self.aggregate_key = aggregate_key
        self.name = f"NanoBEIR_R{rerank_k:d}_{aggregate_key}"
        validate_dataset_names(self.dataset_names)
        reranking_kwargs = {
            "at_k": at_k,
            "always_rerank_positives": always_rerank_positives,
            "prompt_name": prompt_name,
            "show_progress_bar": show_progress_bar,
            "batch_size": batch_size,
            "write_csv": write_csv,
        }
        self.evaluators = [self._load_dataset(name, **reranking_kwargs) for name in self.dataset_names]
        self.csv_file = f"NanoBEIR_evaluation_{aggregate_key}_results.csv"
        self.csv_headers = ["epoch", "steps", "MAP", f"MRR@{at_k}", f"NDCG@{at_k}"]
        self.primary_metric = f"ndcg@{at_k}"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args, **kwargs):
        logger.info(f"NanoBEIR Evaluation of the model on {self.dataset_names} dataset{epoch_text(epoch, steps)}:")
        per_metric, per_dataset = {}, {}
        for evaluator in tqdm(self.evaluators, desc="Evaluating datasets", disable=not self.show_progress_bar):
            logger.info(f"Evaluating {evaluator.name}")
            for key, value in evaluator(model, output_path, epoch, steps).items():
                dataset, _, metric = key.split("_", maxsplit=2)  # "NanoMSMARCO", "R100", "ndcg@10"
                per_metric.setdefault(metric, []).append(value)
                per_dataset[f"{dataset}_R{self.rerank_k}_{metric}"] = value
            logger.info("")
        aggregated = {metric: self.aggregate_fn(values) for metric, values in per_metric.items()}
        k = self.at_k
        if output_path is not None and self.write_csv:
            row = [epoch, steps, aggregated["map"], aggregated[f"mrr@{k}"], aggregated[f"ndcg@{k}"]]
            append_plain_csv_row(output_path, self.csv_file, self.csv_headers, row)

        pad = " " * len(str(k))
        logger.info("CrossEncoderNanoBEIREvaluator: Aggregated Results:")
        logger.info(f"{pad}       Base  -> Reranked")
        logger.info(f"MAP:{pad}   {aggregated['base_map'] * 100:.2f} -> {aggregated['map'] * 100:.2f}")
        logger.info(f"MRR@{k}:  {aggregated[f'base_mrr@{k}'] * 100:.2f} -> {aggregated[f'mrr@{k}'] * 100:.2f}")
        logger.info(f"NDCG@{k}: {aggregated[f'base_ndcg@{k}'] * 100:.2f} -> {aggregated[f'ndcg@{k}'] * 100:.2f}")
        card = {
            metric: f"{aggregated[metric]:.4f} ({aggregated[metric] - aggregated['base_' + metric]:+.4f})"
            for metric in ("map", f"mrr@{k}", f"ndcg@{k}")
        }
        self.store_metrics_in_model_card_data(model, self.prefix_name_to_metrics(card, self.name), epoch, steps)
        per_dataset.update(self.prefix_name_to_metrics(aggregated, self.name))
        return per_dataset

    def _get_human_readable_name(self, dataset_name: str) -> str:
        return f"Nano{DATASET_NAME_TO_HUMAN_READABLE[dataset_name.lower()]}_R{self.rerank_k}"

    def _load_dataset(self, dataset_name: str, **reranking_kwargs) -> CrossEncoderRerankingEvaluator:
        split = f"Nano{DATASET_NAME_TO_HUMAN_READABLE[dataset_name.lower()]}"
        tables = {subset: self._load_subset(subset, split, columns) for subset, columns in SUBSET_COLUMNS.items()}
        samples = build_samples(**tables, rerank_k=self.rerank_k,
                                where=f"Split '{split}' of dataset '{self.dataset_id}'")
        return CrossEncoderRerankingEvaluator(samples=samples, name=self._get_human_readable_name(dataset_name),
                                              **reranking_kwargs)

    def _load_subset(self, subset: str, split: str, required_columns: list[str]):
        table = load_subset_split(self.dataset_id, subset, split, evaluator="CrossEncoderNanoBEIREvaluator",
                                  subsets=tuple(SUBSET_COLUMNS),
                                  alternative="; subset 'bm25' has columns 'query-id' and 'corpus-ids' (corpus ids "
                                  "ranked best first)")
        if missing := set(required_columns) - set(table.column_names):
            raise ValueError(f"Subset '{subset}' split '{split}' from dataset '{self.dataset_id}' is missing required "
                             f"columns: {sorted(missing)}.")
        return table

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "dataset_names": self.dataset_names,
            "dataset_id": self.dataset_id,
            "rerank_k": self.rerank_k,
            "at_k": self.at_k,
            "always_rerank_positives": self.always_rerank_positives,
        }
