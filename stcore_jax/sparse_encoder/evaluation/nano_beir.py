"""SparseNanoBEIREvaluator: the NanoBEIR evaluator over SparseInformationRetrievalEvaluator, with the sparsity
statistics aggregated over the datasets.

The data comes as for the dense evaluator (``stcore_jax/base/evaluation/nano_beir.py``): ``datasets=`` objects, a
local directory as ``dataset_id`` (a snapshot of the Hub repository or ``save_to_disk`` subsets), or the Hub.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from stcore_jax.sentence_transformer.evaluation.nano_beir import NanoBEIREvaluator
from stcore_jax.similarity import SimilarityFunction
from stcore_jax.sparse_encoder.evaluation.information_retrieval import (
    SPARSE_IR_HEADERS,
    SparseInformationRetrievalEvaluator,
)
from stcore_jax.sparse_encoder.evaluation.sparsity import SparsityMixin, average_flops, weighted_mean


class SparseNanoBEIREvaluator(SparsityMixin, NanoBEIREvaluator):
    """Evaluate a :class:`~stcore_jax.SparseEncoder` on NanoBEIR datasets (``Nano{Name}[_{max_active_dims}]_*``)
    and their aggregate (``NanoBEIR_{aggregate_key}[_{max_active_dims}]_*``).

    Arguments as sentence-transformers 6.2's ``SparseNanoBEIREvaluator``, plus the dense evaluator's ``datasets``
    (data passed as objects, for use without the Hub). Per dataset the SparseInformationRetrievalEvaluator's
    metrics; aggregated, the IR metrics by ``aggregate_fn``, the sparsity statistics as means weighted by the
    datasets' query / corpus sizes, and ``avg_flops`` recomputed from the count vectors summed over datasets.
    Primary metric ``NanoBEIR_mean_dot_ndcg@10`` by default.
    """

    information_retrieval_class = SparseInformationRetrievalEvaluator

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
        max_active_dims: int | None = None,
        score_functions: dict[str, Callable] | None = None,
        main_score_function: str | SimilarityFunction | None = None,
        aggregate_fn: Callable[[list[float]], float] = np.mean,
        aggregate_key: str = "mean",
        query_prompts: str | dict[str, str] | None = None,
        corpus_prompts: str | dict[str, str] | None = None,
        write_predictions: bool = False,
        datasets: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        self.max_active_dims = max_active_dims
        self.sparsity_stats = {}
        super().__init__(
            dataset_names=dataset_names, dataset_id=dataset_id, mrr_at_k=mrr_at_k, ndcg_at_k=ndcg_at_k,
            accuracy_at_k=accuracy_at_k, precision_recall_at_k=precision_recall_at_k, map_at_k=map_at_k,
            show_progress_bar=show_progress_bar, batch_size=batch_size, write_csv=write_csv,
            score_functions=score_functions, main_score_function=main_score_function, aggregate_fn=aggregate_fn,
            aggregate_key=aggregate_key, query_prompts=query_prompts, corpus_prompts=corpus_prompts,
            write_predictions=write_predictions, datasets=datasets,
        )
        if max_active_dims is not None:
            self.name += f"_{max_active_dims}"

    def _get_human_readable_name(self, dataset_name: str) -> str:
        name = super()._get_human_readable_name(dataset_name)
        return name + (f"_{self.max_active_dims}" if self.max_active_dims is not None else "")

    def _append_csv_headers(self, score_function_names):
        super()._append_csv_headers(score_function_names)
        if score_function_names:
            self.csv_headers.extend(SPARSE_IR_HEADERS)

    def _load_dataset(self, dataset_name: str, **ir_kwargs) -> SparseInformationRetrievalEvaluator:
        ir_kwargs["max_active_dims"] = self.max_active_dims
        ir_kwargs.pop("truncate_dim", None)
        return super()._load_dataset(dataset_name, **ir_kwargs)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args, **kwargs):
        results = super().__call__(model, output_path, epoch, steps, *args, **kwargs)
        lengths = {"query": [len(e.queries) for e in self.evaluators],
                   "corpus": [len(e.corpus) for e in self.evaluators]}
        stats = {}
        for key in self.evaluators[0].sparsity_stats:
            if key != "avg_flops":
                values = [e.sparsity_stats[key] for e in self.evaluators]
                stats[key] = weighted_mean(values, lengths[key.split("_")[0]])
        stats["avg_flops"] = average_flops(
            sum(e.count_vectors["query"] for e in self.evaluators), sum(lengths["query"]),
            sum(e.count_vectors["corpus"] for e in self.evaluators), sum(lengths["corpus"]))
        return self.report_sparsity(model, results, stats, output_path, epoch, steps)

    def store_metrics_in_model_card_data(self, model, metrics, epoch: int = 0, step: int = 0) -> None:
        # The model card gets the aggregate only (the dense evaluator stores it once per call; this is the final one).
        aggregated = {key: value for key, value in metrics.items() if key.startswith(self.name) and key != self.name}
        super().store_metrics_in_model_card_data(model, aggregated, epoch, step)
