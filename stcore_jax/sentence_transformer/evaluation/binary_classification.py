"""BinaryClassificationEvaluator: how well a similarity threshold separates similar from dissimilar pairs."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from stcore_jax.base.evaluation import metrics as _metrics
from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, embed, epoch_text, similarity_name
from stcore_jax.similarity import SimilarityFunction

logger = logging.getLogger(__name__)

# name -> (display name, greater_is_better). Distances are scored as positive distances.
_FUNCTIONS = {
    "cosine": ("Cosine-Similarity", True),
    "dot": ("Dot-Product", True),
    "manhattan": ("Manhattan-Distance", False),
    "euclidean": ("Euclidean-Distance", False),
}
_METRICS = ["accuracy", "accuracy_threshold", "f1", "precision", "recall", "f1_threshold", "ap", "mcc"]


class BinaryClassificationEvaluator(SentenceEvaluator):
    """Accuracy, F1, precision, recall, average precision and MCC of thresholded pair similarities.

    ``labels`` are 0 (dissimilar) or 1 (similar). For each similarity function (the model's by
    default) reports ``{fn}_accuracy``, ``{fn}_accuracy_threshold``, ``{fn}_f1``,
    ``{fn}_f1_threshold``, ``{fn}_precision``, ``{fn}_recall``, ``{fn}_ap`` and ``{fn}_mcc``
    (plus ``max_*`` for several functions). Primary metric: ``{fn}_ap`` or ``max_ap``. For
    ``manhattan`` / ``euclidean`` the scores are distances (smaller = more similar), as in
    sentence-transformers 6.x.
    """

    def __init__(
        self,
        sentences1: list[str],
        sentences2: list[str],
        labels: list[int],
        name: str = "",
        batch_size: int = 32,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        truncate_dim: int | None = None,
        similarity_fn_names: list[Literal["cosine", "dot", "euclidean", "manhattan"]] | None = None,
    ):
        super().__init__()
        assert len(sentences1) == len(sentences2) == len(labels)
        for label in labels:
            assert label == 0 or label == 1
        self.sentences1 = sentences1
        self.sentences2 = sentences2
        self.labels = labels
        self.truncate_dim = truncate_dim
        self.similarity_fn_names = list(similarity_fn_names or [])
        self.write_csv = write_csv
        self.name = name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.csv_file = "binary_classification_evaluation" + (f"_{name}" if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps"]
        self._append_csv_headers(self.similarity_fn_names)

    def _append_csv_headers(self, similarity_fn_names):
        self.csv_headers += [f"{fn}_{metric}" for fn in similarity_fn_names for metric in _METRICS]

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(
            f"Binary Accuracy Evaluation of the model on the {self.name} dataset"
            f"{epoch_text(epoch, steps, self.truncate_dim)}:"
        )
        if not self.similarity_fn_names:
            self.similarity_fn_names = [similarity_name(model)]
            self._append_csv_headers(self.similarity_fn_names)
        scores = self.compute_metrics(model)

        if output_path is not None and self.write_csv:
            row = [epoch, steps]
            for header in self.csv_headers[2:]:
                fn, metric = header.split("_", maxsplit=1)
                if fn in scores:
                    row.append(scores[fn][metric])
            append_csv_row(output_path, self.csv_file, self.csv_headers, row)

        metrics = {f"{fn}_{metric}": value for fn, values in scores.items() for metric, value in values.items()}
        if len(self.similarity_fn_names) > 1:
            metrics.update(
                {f"max_{metric}": max(scores[fn][metric] for fn in scores) for metric in next(iter(scores.values()))}
            )
            self.primary_metric = "max_ap"
        else:
            self.primary_metric = f"{self.similarity_fn_names[0]}_ap"

        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def compute_metrics(self, model) -> dict[str, dict[str, float]]:
        try:
            # Hashable inputs: embed each distinct sentence once.
            sentences = list({*self.sentences1, *self.sentences2})
        except TypeError:
            emb1 = self.embed_inputs(model, self.sentences1)
            emb2 = self.embed_inputs(model, self.sentences2)
        else:
            embeddings = self.embed_inputs(model, sentences)
            row = {sentence: i for i, sentence in enumerate(sentences)}
            emb1 = embeddings[[row[s] for s in self.sentences1]]
            emb2 = embeddings[[row[s] for s in self.sentences2]]

        labels = np.asarray(self.labels)
        output = {}
        for fn_name in self.similarity_fn_names:
            display, greater_is_better = _FUNCTIONS[fn_name]
            scores = np.asarray(SimilarityFunction.to_similarity_pairwise_fn(fn_name)(emb1, emb2))
            if not greater_is_better:
                scores = -scores  # negative distances back to distances
            acc, acc_threshold = _metrics.best_accuracy_and_threshold(scores, labels, greater_is_better)
            f1, precision, recall, f1_threshold = _metrics.best_f1_and_threshold(scores, labels, greater_is_better)
            ap = _metrics.average_precision(labels, scores if greater_is_better else -scores)
            predicted = scores >= f1_threshold if greater_is_better else scores <= f1_threshold
            mcc = _metrics.matthews_corrcoef(labels, predicted)

            logger.info(f"Accuracy with {display}:             {acc * 100:.2f}\t(Threshold: {acc_threshold:.4f})")
            logger.info(f"F1 with {display}:                   {f1 * 100:.2f}\t(Threshold: {f1_threshold:.4f})")
            logger.info(f"Precision with {display}:            {precision * 100:.2f}")
            logger.info(f"Recall with {display}:               {recall * 100:.2f}")
            logger.info(f"Average Precision with {display}:    {ap * 100:.2f}")
            logger.info(f"Matthews Correlation with {display}: {mcc * 100:.2f}\n")
            output[fn_name] = {
                "accuracy": acc,
                "accuracy_threshold": acc_threshold,
                "f1": f1,
                "f1_threshold": f1_threshold,
                "precision": precision,
                "recall": recall,
                "ap": ap,
                "mcc": mcc,
            }
        return output

    compute_metrices = compute_metrics

    def embed_inputs(self, model, sentences, **kwargs) -> np.ndarray:
        return embed(
            model,
            sentences,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            truncate_dim=self.truncate_dim,
            **kwargs,
        )

    find_best_acc_and_threshold = staticmethod(_metrics.best_accuracy_and_threshold)
    find_best_f1_and_threshold = staticmethod(_metrics.best_f1_and_threshold)

    def get_config_dict(self):
        return {"truncate_dim": self.truncate_dim} if self.truncate_dim is not None else {}
