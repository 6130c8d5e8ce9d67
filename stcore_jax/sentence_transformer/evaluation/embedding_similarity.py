"""EmbeddingSimilarityEvaluator: Pearson / Spearman correlation of pair similarities with gold scores."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from stcore_jax.base.evaluation import metrics as _metrics
from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, embed, epoch_text, similarity_name
from stcore_jax.similarity import SimilarityFunction

logger = logging.getLogger(__name__)

_PAIRWISE = ("cosine", "manhattan", "euclidean", "dot")


class EmbeddingSimilarityEvaluator(SentenceEvaluator):
    """Correlate ``similarity(embed(sentences1[i]), embed(sentences2[i]))`` with ``scores[i]``.

    Reports ``pearson_{fn}`` and ``spearman_{fn}`` for each similarity function (the model's
    ``similarity_fn_name`` unless ``similarity_fn_names`` / ``main_similarity`` say otherwise), plus
    ``pearson_max`` / ``spearman_max`` when there are several. Primary metric: ``spearman_{main}``
    if ``main_similarity`` is set, else ``spearman_max`` for several functions, else
    ``spearman_{fn}``. Pair similarities run on device; correlations follow scipy (average ranks
    for ties).

    Args:
      sentences1, sentences2: the pairs.
      scores: gold similarity per pair.
      batch_size: encoding batch size.
      main_similarity: ``"cosine"``, ``"dot"``, ``"euclidean"`` or ``"manhattan"``.
      similarity_fn_names: functions to report.
      name: prefix of the metric keys and CSV file name.
      show_progress_bar, write_csv: as in sentence-transformers.
      precision: ``"float32"``, ``"int8"``, ``"uint8"``, ``"binary"`` or ``"ubinary"``; forwarded to
        ``model.encode(precision=..., normalize_embeddings=True)`` (the model must support it).
      truncate_dim: forwarded to ``encode``.
    """

    def __init__(
        self,
        sentences1: list[str],
        sentences2: list[str],
        scores: list[float],
        batch_size: int = 16,
        main_similarity: str | SimilarityFunction | None = None,
        similarity_fn_names: list[Literal["cosine", "euclidean", "manhattan", "dot"]] | None = None,
        name: str = "",
        show_progress_bar: bool = False,
        write_csv: bool = True,
        precision: Literal["float32", "int8", "uint8", "binary", "ubinary"] | None = None,
        truncate_dim: int | None = None,
    ):
        super().__init__()
        assert len(sentences1) == len(sentences2) == len(scores)
        bad = [i for i, x in enumerate(scores) if not np.isfinite(x)]
        if bad:  # a NaN gold score would be ranked as if it were a number (the reference reports NaN)
            raise ValueError(f"EmbeddingSimilarityEvaluator: scores must be finite; scores[{bad[0]}] is "
                             f"{scores[bad[0]]!r} ({len(bad)} such); drop those pairs")
        unknown = [fn for fn in similarity_fn_names or [] if fn not in _PAIRWISE]
        if unknown:  # they would be skipped, leaving no metric for them
            raise ValueError(f"EmbeddingSimilarityEvaluator: similarity_fn_names {unknown} are not supported; "
                             f"choose from {list(_PAIRWISE)}")
        self.sentences1 = sentences1
        self.sentences2 = sentences2
        self.scores = scores
        self.write_csv = write_csv
        self.precision = precision
        self.truncate_dim = truncate_dim
        self.main_similarity = SimilarityFunction(main_similarity) if main_similarity else None
        self.similarity_fn_names = list(similarity_fn_names or [])
        if not self.similarity_fn_names and self.main_similarity is not None:
            self.similarity_fn_names = [self.main_similarity.value]
        self.name = name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        suffix = (f"_{name}" if name else "") + (f"_{precision}" if precision else "")
        self.csv_file = f"similarity_evaluation{suffix}_results.csv"
        self.csv_headers = ["epoch", "steps"]
        self._append_csv_headers(self.similarity_fn_names)

    def _append_csv_headers(self, similarity_fn_names):
        self.csv_headers += [f"{fn}_{metric}" for fn in similarity_fn_names for metric in ("pearson", "spearman")]

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(
            f"EmbeddingSimilarityEvaluator: Evaluating the model on the {self.name} dataset"
            f"{epoch_text(epoch, steps, self.truncate_dim)}:"
        )
        if self.precision in ("int8", "uint8"):
            # Calibrate both sides together so the same sentence gets the same quantized embedding.
            both = self.embed_inputs(model, [*self.sentences1, *self.sentences2])
            emb1, emb2 = both[: len(self.sentences1)], both[len(self.sentences1) :]
        else:
            emb1 = self.embed_inputs(model, self.sentences1)
            emb2 = self.embed_inputs(model, self.sentences2)
        if self.precision == "binary":
            emb1, emb2 = emb1.astype(np.int16) + 128, emb2.astype(np.int16) + 128
        if self.precision in ("ubinary", "binary"):
            emb1 = np.unpackbits(emb1.astype(np.uint8), axis=1)
            emb2 = np.unpackbits(emb2.astype(np.uint8), axis=1)
        if self.precision in ("int8", "uint8", "ubinary", "binary"):
            emb1, emb2 = emb1.astype(np.float32), emb2.astype(np.float32)

        if not self.similarity_fn_names:
            self.similarity_fn_names = [similarity_name(model)]
            self._append_csv_headers(self.similarity_fn_names)

        metrics = {}
        for fn_name in self.similarity_fn_names:
            if fn_name not in _PAIRWISE:
                continue
            pair_scores = np.asarray(SimilarityFunction.to_similarity_pairwise_fn(fn_name)(emb1, emb2))
            metrics[f"pearson_{fn_name}"] = _metrics.pearson(self.scores, pair_scores)
            metrics[f"spearman_{fn_name}"] = _metrics.spearman(self.scores, pair_scores)
            logger.info(
                f"{fn_name.capitalize()}-Similarity:\tPearson: {metrics[f'pearson_{fn_name}']:.4f}"
                f"\tSpearman: {metrics[f'spearman_{fn_name}']:.4f}"
            )

        if output_path is not None and self.write_csv:
            row = [metrics[f"{m}_{fn}"] for fn in self.similarity_fn_names for m in ("pearson", "spearman")]
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *row])

        if len(self.similarity_fn_names) > 1:
            metrics["pearson_max"] = max(metrics[f"pearson_{fn}"] for fn in self.similarity_fn_names)
            metrics["spearman_max"] = max(metrics[f"spearman_{fn}"] for fn in self.similarity_fn_names)

        if self.main_similarity:
            self.primary_metric = f"spearman_{self.main_similarity.value}"
        elif len(self.similarity_fn_names) > 1:
            self.primary_metric = "spearman_max"
        else:
            self.primary_metric = f"spearman_{self.similarity_fn_names[0]}"

        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def embed_inputs(self, model, sentences, **kwargs) -> np.ndarray:
        if self.precision:
            kwargs.update(precision=self.precision, normalize_embeddings=True)
        return embed(
            model,
            sentences,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            truncate_dim=self.truncate_dim,
            **kwargs,
        )

    @property
    def description(self) -> str:
        return "Semantic Similarity"

    def get_config_dict(self):
        return {key: getattr(self, key) for key in ("truncate_dim", "precision") if getattr(self, key) is not None}
