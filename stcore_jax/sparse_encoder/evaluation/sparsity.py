"""What the sparse evaluators add to their dense parents: the ``encode`` call with ``max_active_dims``, and the
sparsity statistics of sentence-transformers' sparse evaluators (``active_dims``, ``sparsity_ratio`` and the
FLOPS count vectors), reported as extra metrics and appended to the dense parent's last CSV row.

The statistics are computed from dense ``[N, V]`` arrays or ``scipy.sparse`` ``[N, V]`` matrices alike, without
densifying the latter; they follow ``SparseEncoder.sparsity`` (the reference's float32 mean of non-zeros per row).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse

logger = logging.getLogger(__name__)


def encode(model, sentences: Sequence[str], *, kind: str | None, batch_size: int, show_progress_bar: bool | None,
           max_active_dims: int | None, sparse: bool = False, **kwargs):
    """``model.encode`` (``kind=None``), ``encode_query`` (``"query"``) or ``encode_document`` (``"document"``).

    Returns dense numpy ``[N, V]`` float32, or with ``sparse`` a ``scipy.sparse.csr_matrix`` ``[N, V]`` (built
    batch by batch by the model, so the rows are never all dense at once). ``max_active_dims=None`` keeps the
    model's own setting.
    """
    fn = model.encode
    if kind == "query":
        fn = getattr(model, "encode_query", model.encode)
    elif kind == "document":
        fn = getattr(model, "encode_document", model.encode)
    if sparse:
        kwargs.update(convert_to_sparse_tensor=True, sparse_format="scipy")
    if not isinstance(sentences, (list, np.ndarray)):
        sentences = list(sentences)
    return fn(sentences, batch_size=batch_size, show_progress_bar=show_progress_bar, max_active_dims=max_active_dims,
              **kwargs)


def _nonzero_per_row(embeddings) -> tuple[np.ndarray, int]:
    """(non-zeros of each row ``[N]``, ``V``) of ``[N, V]`` / ``[V]`` dense or ``scipy.sparse`` embeddings."""
    if scipy.sparse.issparse(embeddings):
        csr = embeddings.tocsr()
        per_row = np.diff(csr.indptr)
        stored_zero = csr.data == 0
        if stored_zero.any():  # an explicitly stored zero is not an active dimension
            rows = np.repeat(np.arange(csr.shape[0]), per_row)
            per_row = np.bincount(rows[~stored_zero], minlength=csr.shape[0])
        return per_row, csr.shape[1]
    dense = np.atleast_2d(np.asarray(embeddings))
    return np.count_nonzero(dense, axis=1), dense.shape[1]


def sparsity(embeddings) -> dict[str, float]:
    """``{"active_dims": mean non-zeros per row, "sparsity_ratio": 1 - active_dims / V}``, as
    ``SparseEncoder.sparsity`` (float32 mean), for dense or ``scipy.sparse`` ``[N, V]``; no rows: ``{0, 1}``."""
    counts, cols = _nonzero_per_row(embeddings)
    if len(counts) == 0 or cols == 0:
        return {"active_dims": 0.0, "sparsity_ratio": 1.0}
    active = float(np.mean(counts.astype(np.float32), dtype=np.float32))
    return {"active_dims": active, "sparsity_ratio": 1.0 - active / cols}


def count_vector(embeddings) -> np.ndarray:
    """``[V]`` int64: how many rows have each dimension active (the reference's ``compute_count_vector``)."""
    active = embeddings != 0  # sparse stays sparse
    return np.asarray(active.sum(axis=0), dtype=np.int64).ravel()


def average_flops(query_counts: np.ndarray, num_queries: int, corpus_counts: np.ndarray, num_docs: int) -> float:
    """Expected FLOPS of one query-document dot product: ``sum_v p_q(v) p_d(v)``, ``p(v)`` the fraction of rows
    with dimension ``v`` active."""
    return float(np.dot(query_counts / num_queries, corpus_counts / num_docs))


def weighted_mean(values: Sequence[float], weights: Sequence[int]) -> float:
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def append_to_last_row(csv_path: str, values) -> None:
    """Extend the last data row of ``csv_path`` with ``values`` (the file is rewritten with the ``csv`` module, as
    the reference's ``util.append_to_last_row`` does); nothing happens when it has no data row."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) > 1:
        rows[-1].extend(values)
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)


class SparsityMixin:
    """Mixed in before a dense evaluator: ``max_active_dims``, the encode call, and the sparsity metrics.

    Subclasses set ``max_active_dims`` and call ``reset_sparsity()`` before the dense ``__init__`` (which may
    already encode, e.g. the MSE teacher), record each encoded block with ``record_sparsity``, and finish their
    ``__call__`` with ``report_sparsity``.
    """

    max_active_dims: int | None

    def reset_sparsity(self) -> None:
        self.sparsity_stats = defaultdict(list)

    def encode_sparse(self, model, sentences, kind: str | None = None, *, sparse: bool = False, **kwargs):
        return encode(model, sentences, kind=kind, batch_size=self.batch_size,
                      show_progress_bar=self.show_progress_bar, max_active_dims=self.max_active_dims,
                      sparse=sparse, **kwargs)

    def record_sparsity(self, embeddings, prefix: str = "") -> None:
        """Append the statistics of one encoded block under ``{prefix}active_dims`` / ``{prefix}sparsity_ratio``."""
        for key, value in sparsity(embeddings).items():
            self.sparsity_stats[prefix + key].append(value)

    def report_sparsity(self, model, metrics: dict[str, float], stats: dict[str, float] | None = None,
                        output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        """Add ``stats`` (default: the plain mean of each recorded list) to ``metrics`` with the evaluator's name
        prefix, record them in the model card, log them, and append them to the CSV row the dense parent wrote."""
        if stats is None:
            stats = {key: sum(values) / len(values) for key, values in self.sparsity_stats.items()}
        self.sparsity_stats = stats
        metrics.update(self.prefix_name_to_metrics(stats, self.name))
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        for prefix in dict.fromkeys(key[: -len("active_dims")] for key in stats if key.endswith("active_dims")):
            label = f"Model {prefix[:-1].capitalize()} Sparsity" if prefix else "Model Sparsity"
            logger.info(f"{label}: Active Dimensions: {stats[prefix + 'active_dims']:.1f}, "
                        f"Sparsity Ratio: {stats[prefix + 'sparsity_ratio']:.4f}")
        if "avg_flops" in stats:
            logger.info(f"Average FLOPS: {stats['avg_flops']:.2f}")
        if output_path is not None and self.write_csv:
            append_to_last_row(os.path.join(output_path, self.csv_file), list(stats.values()))
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        if self.max_active_dims is not None:
            config["max_active_dims"] = self.max_active_dims
        return config


class PooledSparsityMixin(SparsityMixin):
    """For evaluators whose parent embeds everything through ``embed_inputs`` and reports one pool of sparsity
    statistics (``active_dims``, ``sparsity_ratio``): embedding similarity, binary classification, MSE,
    translation. Put it first in the bases."""

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        self.reset_sparsity()  # e.g. drops what the constructor recorded (SparseMSEEvaluator's teacher)
        metrics = super().__call__(model, output_path, epoch, steps)
        return self.report_sparsity(model, metrics, None, output_path, epoch, steps)

    def embed_inputs(self, model, sentences, **kwargs):
        """Dense ``[N, V]`` from ``model.encode``, counted into the statistics."""
        embeddings = self.encode_sparse(model, sentences, **kwargs)
        self.record_sparsity(embeddings)
        return embeddings
