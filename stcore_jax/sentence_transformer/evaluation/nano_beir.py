"""NanoBEIREvaluator: InformationRetrievalEvaluator over the NanoBEIR datasets, plus aggregates.

Data comes from, in order of preference: ``datasets=`` objects passed in; ``dataset_id`` as a local
directory (a snapshot of the Hugging Face repository, or ``save_to_disk`` outputs per subset); or
``dataset_id`` as a Hugging Face Hub id through ``datasets.load_dataset`` (network or cache).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_plain_csv_row, epoch_text
from stcore_jax.base.evaluation.nano_beir import (
    DATASET_NAME_TO_HUMAN_READABLE,
    load_subset_split,
    validate_dataset_names,
)
from stcore_jax.sentence_transformer.evaluation.information_retrieval import InformationRetrievalEvaluator
from stcore_jax.similarity import SimilarityFunction

logger = logging.getLogger(__name__)


def _rows_of(table) -> list[dict]:
    """Rows of a ``datasets.Dataset``, a list of dicts or a dict of columns."""
    if isinstance(table, Mapping):
        keys = list(table)
        return [dict(zip(keys, values)) for values in zip(*(table[k] for k in keys))]
    return list(table)


def _columns_of(table) -> list[str]:
    if hasattr(table, "column_names"):
        return list(table.column_names)
    if isinstance(table, Mapping):
        return list(table)
    rows = list(table)
    return list(rows[0]) if rows else []


class NanoBEIREvaluator(SentenceEvaluator):
    """Evaluate retrieval on NanoBEIR datasets (``Nano{Name}_{fn}_{metric}``) and their aggregate.

    Same arguments as sentence-transformers 6.2 (``dataset_names`` short names, ``dataset_id``, the
    IR ``*_at_k`` lists, ``score_functions``, ``main_score_function``, ``aggregate_fn``,
    ``aggregate_key``, ``query_prompts`` / ``corpus_prompts`` as one string or a per-dataset dict,
    ``write_predictions``), plus:

    Args:
      datasets: optional ``{short_name: {"corpus": …, "queries": …, "qrels": …}}`` with
        ``datasets.Dataset`` objects, lists of rows or dicts of columns (``corpus``/``queries``: ``_id``,
        ``text``; ``qrels``: ``query-id``, ``corpus-id``), for use without the Hub.

    Aggregates are ``NanoBEIR_{aggregate_key}[_{truncate_dim}]_{fn}_{metric}``; the primary metric
    is ``NanoBEIR_mean_{fn}_ndcg@10`` by default.
    """

    information_retrieval_class = InformationRetrievalEvaluator

    def __init__(
        self,
        dataset_names: list[str] | None = None,
        dataset_id: str = "sentence-transformers/NanoBEIR-en",
        mrr_at_k: Sequence[int] = (10,),
        ndcg_at_k: Sequence[int] = (10,),
        accuracy_at_k: Sequence[int] = (1, 3, 5, 10),
        precision_recall_at_k: Sequence[int] = (1, 3, 5, 10),
        map_at_k: Sequence[int] = (100,),
        show_progress_bar: bool = False,
        batch_size: int = 32,
        write_csv: bool = True,
        truncate_dim: int | None = None,
        score_functions: dict[str, Callable] | None = None,
        main_score_function: str | SimilarityFunction | None = None,
        aggregate_fn: Callable[[list[float]], float] = np.mean,
        aggregate_key: str = "mean",
        query_prompts: str | dict[str, str] | None = None,
        corpus_prompts: str | dict[str, str] | None = None,
        write_predictions: bool = False,
        datasets: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        super().__init__()
        if dataset_names is None:
            dataset_names = list(datasets) if datasets else list(DATASET_NAME_TO_HUMAN_READABLE)
        self.dataset_names = dataset_names
        self.dataset_id = dataset_id
        self._provided = {k.lower(): v for k, v in (datasets or {}).items()}
        self.aggregate_fn = aggregate_fn
        self.aggregate_key = aggregate_key
        self.write_csv = write_csv
        self.query_prompts = query_prompts
        self.corpus_prompts = corpus_prompts
        self.show_progress_bar = show_progress_bar
        self.score_functions = score_functions
        self.score_function_names = sorted(score_functions) if score_functions else []
        self._score_functions_from_model = score_functions is None
        self.main_score_function = SimilarityFunction(main_score_function) if main_score_function else None
        self.truncate_dim = truncate_dim
        self.name = f"NanoBEIR_{aggregate_key}" + (f"_{truncate_dim}" if truncate_dim else "")
        self.mrr_at_k = mrr_at_k
        self.ndcg_at_k = ndcg_at_k
        self.accuracy_at_k = accuracy_at_k
        self.precision_recall_at_k = precision_recall_at_k
        self.map_at_k = map_at_k
        self._validate_dataset_names()
        self._validate_prompts()
        ir_kwargs = {
            "mrr_at_k": mrr_at_k,
            "ndcg_at_k": ndcg_at_k,
            "accuracy_at_k": accuracy_at_k,
            "precision_recall_at_k": precision_recall_at_k,
            "map_at_k": map_at_k,
            "show_progress_bar": show_progress_bar,
            "batch_size": batch_size,
            "write_csv": write_csv,
            "truncate_dim": truncate_dim,
            "score_functions": score_functions,
            "main_score_function": main_score_function,
            "write_predictions": write_predictions,
        }
        self.evaluators = [self._load_dataset(name, **ir_kwargs) for name in self.dataset_names]
        self.csv_file = f"NanoBEIR_evaluation_{aggregate_key}_results.csv"
        self.csv_headers = ["epoch", "steps"]
        self._append_csv_headers(self.score_function_names)

    _append_csv_headers = InformationRetrievalEvaluator._append_csv_headers

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args, **kwargs):
        when = epoch_text(epoch, steps, self.truncate_dim)
        logger.info(f"NanoBEIR Evaluation of the model on {self.dataset_names} dataset{when}:")
        if self._score_functions_from_model:
            self.score_functions = self.evaluators[0]._model_score_functions(model)
            if self.score_function_names != sorted(self.score_functions):
                self.score_function_names = sorted(self.score_functions)
                self.csv_headers = ["epoch", "steps"]
                self._append_csv_headers(self.score_function_names)
                self.primary_metric = None

        per_metric, per_dataset = {}, {}
        num_underscores = self.name.count("_")
        for evaluator in self.evaluators:
            logger.info(f"Evaluating {evaluator.name}")
            for full_key, value in evaluator(model, output_path, epoch, steps).items():
                metric = full_key.split("_", maxsplit=num_underscores)[-1]
                per_metric.setdefault(metric, []).append(value)
                per_dataset[full_key] = value
        aggregated = {metric: self.aggregate_fn(values) for metric, values in per_metric.items()}

        if output_path is not None and self.write_csv:
            row = [epoch, steps]
            for fn in self.score_function_names:
                row += [aggregated[f"{fn}_accuracy@{k}"] for k in self.accuracy_at_k]
                for k in self.precision_recall_at_k:
                    row += [aggregated[f"{fn}_precision@{k}"], aggregated[f"{fn}_recall@{k}"]]
                row += [aggregated[f"{fn}_mrr@{k}"] for k in self.mrr_at_k]
                row += [aggregated[f"{fn}_ndcg@{k}"] for k in self.ndcg_at_k]
                row += [aggregated[f"{fn}_map@{k}"] for k in self.map_at_k]
            append_plain_csv_row(output_path, self.csv_file, self.csv_headers, row)

        if not self.primary_metric:
            top = max(self.ndcg_at_k)
            if self.main_score_function is None:
                best = max(self.score_function_names, key=lambda fn: aggregated[f"{fn}_ndcg@{top}"])
                self.primary_metric = f"{best}_ndcg@{top}"
            else:
                self.primary_metric = f"{self.main_score_function.value}_ndcg@{top}"

        logger.info(f"Average Queries: {np.mean([len(e.queries) for e in self.evaluators])}")
        logger.info(f"Average Corpus: {np.mean([len(e.corpus) for e in self.evaluators])}\n")
        aggregated = self.prefix_name_to_metrics(aggregated, self.name)
        self.store_metrics_in_model_card_data(model, aggregated, epoch, steps)
        per_dataset.update(aggregated)
        return per_dataset

    def _get_human_readable_name(self, dataset_name: str) -> str:
        name = f"Nano{DATASET_NAME_TO_HUMAN_READABLE[dataset_name.lower()]}"
        return name + (f"_{self.truncate_dim}" if self.truncate_dim is not None else "")

    def _load_dataset(self, dataset_name: str, **ir_kwargs) -> InformationRetrievalEvaluator:
        split = f"Nano{DATASET_NAME_TO_HUMAN_READABLE[dataset_name.lower()]}"
        corpus = self._load_subset(dataset_name, "corpus", split, ["_id", "text"])
        queries = self._load_subset(dataset_name, "queries", split, ["_id", "text"])
        qrels = self._load_subset(dataset_name, "qrels", split, ["query-id", "corpus-id"])
        corpus_dict = {row["_id"]: row["text"] for row in corpus if len(row["text"]) > 0}
        queries_dict = {row["_id"]: row["text"] for row in queries if len(row["text"]) > 0}
        qrels_dict: dict[Any, set] = {}
        for row in qrels:
            ids = row.get("corpus-id")
            target = qrels_dict.setdefault(row["query-id"], set())
            if isinstance(ids, list):
                target.update(ids)
            else:
                target.add(ids)
        if self.query_prompts is not None:
            ir_kwargs["query_prompt"] = self.query_prompts.get(dataset_name)
        if self.corpus_prompts is not None:
            ir_kwargs["corpus_prompt"] = self.corpus_prompts.get(dataset_name)
        return self.information_retrieval_class(
            queries=queries_dict,
            corpus=corpus_dict,
            relevant_docs=qrels_dict,
            name=self._get_human_readable_name(dataset_name),
            **ir_kwargs,
        )

    def _load_subset(self, dataset_name: str, subset: str, split: str, required_columns: list[str]) -> list[dict]:
        provided = self._provided.get(dataset_name.lower())
        if provided is not None and subset in provided:
            table = provided[subset]
            source = f"the `datasets` argument ({dataset_name!r})"
        else:
            table = self._load_from_id(subset, split)
            source = f"dataset {self.dataset_id!r}"
        if missing := set(required_columns) - set(_columns_of(table)):
            raise ValueError(
                f"Subset '{subset}' split '{split}' from {source} is missing required columns: {sorted(missing)}."
            )
        return _rows_of(table)

    def _load_from_id(self, subset: str, split: str):
        return load_subset_split(
            self.dataset_id, subset, split, evaluator="NanoBEIREvaluator", subsets=("corpus", "queries", "qrels"),
            alternative=", or datasets={'msmarco': {'corpus': ..., 'queries': ..., 'qrels': ...}} with "
            "datasets.Dataset objects, lists of rows or dicts of columns",
        )

    def _validate_dataset_names(self):
        validate_dataset_names(self.dataset_names)

    def _validate_prompts(self):
        errors = ""
        for attr, kind in (("query_prompts", "query"), ("corpus_prompts", "corpus")):
            prompts = getattr(self, attr)
            if prompts is None:
                continue
            if isinstance(prompts, str):
                setattr(self, attr, dict.fromkeys(self.dataset_names, prompts))
            elif missing := [name for name in self.dataset_names if name not in prompts]:
                errors += f"The following datasets are missing {kind} prompts: {missing}\n"
        if errors:
            raise ValueError(errors.strip())

    def store_metrics_in_model_card_data(self, *args, **kwargs):
        # With one dataset the aggregate equals that dataset's scores; don't record them twice.
        if len(self.dataset_names) > 1:
            super().store_metrics_in_model_card_data(*args, **kwargs)

    def get_config_dict(self) -> dict[str, Any]:
        config = {"dataset_names": self.dataset_names, "dataset_id": self.dataset_id}
        for key in ("truncate_dim", "query_prompts", "corpus_prompts"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config
