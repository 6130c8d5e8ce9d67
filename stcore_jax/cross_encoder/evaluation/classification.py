"""CrossEncoderClassificationEvaluator: binary threshold search (one label) or argmax F1 (several labels)."""

from __future__ import annotations

import logging

import numpy as np

from stcore_jax.base.evaluation import metrics as _metrics
from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, epoch_text
from stcore_jax.cross_encoder.evaluation._common import default_progress_bar, predict_scores

logger = logging.getLogger(__name__)

_BINARY_HEADERS = ["Accuracy", "Accuracy_Threshold", "F1", "F1_Threshold", "Precision", "Recall", "Average_Precision"]
_MULTI_HEADERS = ["Macro_F1", "Micro_F1", "Weighted_F1"]


def f1_averages(labels, predicted) -> dict[str, float]:
    """``sklearn.metrics.f1_score`` with ``average="macro" / "micro" / "weighted"``, as ``f1_{average}``.

    Classes are the union of ``labels`` and ``predicted`` ([N] ints); per class
    ``F1 = 2 TP / (2 TP + FP + FN)`` (0 when the denominator is 0, sklearn's ``zero_division`` default);
    macro is their mean, weighted their mean weighted by true support, micro uses the summed counts.
    """
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    classes = np.union1d(labels, predicted)
    tp = np.array([np.sum((labels == c) & (predicted == c)) for c in classes], dtype=np.float64)
    fp = np.array([np.sum((labels != c) & (predicted == c)) for c in classes], dtype=np.float64)
    fn = np.array([np.sum((labels == c) & (predicted != c)) for c in classes], dtype=np.float64)
    denom = 2 * tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    support = tp + fn
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "f1_macro": float(per_class.mean()) if len(classes) else 0.0,
        "f1_micro": float(2 * tp.sum() / micro_denom) if micro_denom > 0 else 0.0,
        "f1_weighted": float(np.sum(per_class * support) / support.sum()) if support.sum() > 0 else 0.0,
    }


def _log(metrics: dict[str, float]) -> None:
    """The reference's log lines (percentages, thresholds to 4 decimals)."""
    if "accuracy" in metrics:
        acc, threshold = metrics["accuracy"], metrics["accuracy_threshold"]
        logger.info(f"Accuracy:          {acc * 100:.2f}\t(Threshold: {threshold:.4f})")
        logger.info(f"F1:                {metrics['f1'] * 100:.2f}\t(Threshold: {metrics['f1_threshold']:.4f})")
        logger.info(f"Precision:         {metrics['precision'] * 100:.2f}")
        logger.info(f"Recall:            {metrics['recall'] * 100:.2f}")
        logger.info(f"Average Precision: {metrics['average_precision'] * 100:.2f}")
    else:
        logger.info(f"Macro F1:           {metrics['f1_macro'] * 100:.2f}")
        logger.info(f"Micro F1:           {metrics['f1_micro'] * 100:.2f}")
        logger.info(f"Weighted F1:        {metrics['f1_weighted'] * 100:.2f}")


class CrossEncoderClassificationEvaluator(SentenceEvaluator):
    """Score ``model.predict(sentence_pairs)`` (after the model's activation) against gold ``labels``.

    With ``model.num_labels == 1`` the ``[N]`` scores are binary-classified by the best threshold
    (higher = positive): ``accuracy``, ``accuracy_threshold``, ``f1``, ``f1_threshold``,
    ``precision``, ``recall``, ``average_precision`` (primary). With several labels the ``[N, C]``
    scores' argmax gives ``f1_macro`` (primary), ``f1_micro``, ``f1_weighted``. Keys are prefixed
    with ``{name}_`` when ``name`` is set. CSV: ``CrossEncoderClassificationEvaluator[_name]_results.csv``.

    Args:
      sentence_pairs: ``[N]`` pairs of two strings.
      labels: ``[N]`` int gold labels (0/1 for one label, class ids otherwise).
      name: prefix of the metric keys and the CSV file name.
      prompt_name: key of ``model.prompts`` passed to ``predict``.
      batch_size: ``predict`` batch size.
      show_progress_bar: ``None`` shows it when logging is at INFO or DEBUG.
      write_csv: append a row to the CSV when ``output_path`` is given.
    """

    def __init__(
        self,
        sentence_pairs: list[list[str]],
        labels: list[int],
        *,
        name: str = "",
        prompt_name: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
        **kwargs,
    ):
        super().__init__()
        if len(sentence_pairs) != len(labels):
            raise ValueError("sentence_pairs and labels must have the same length")
        self.sentence_pairs = sentence_pairs
        self.labels = np.asarray(labels)
        self.name = name
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.show_progress_bar = default_progress_bar(show_progress_bar)
        self.csv_file = "CrossEncoderClassificationEvaluator" + ("_" + name if name else "") + "_results.csv"
        self.write_csv = write_csv

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(f"CrossEncoderClassificationEvaluator: Evaluating the model on {self.name} dataset"
                    f"{epoch_text(epoch, steps)}:")
        pred = predict_scores(model, self.sentence_pairs, prompt_name=self.prompt_name, batch_size=self.batch_size,
                              show_progress_bar=self.show_progress_bar)
        if model.num_labels == 1:
            metrics = self.binary_metrics(pred, self.labels)
            self.csv_headers = ["epoch", "steps", *_BINARY_HEADERS]
            self.primary_metric = "average_precision"
        else:
            metrics = f1_averages(self.labels, np.argmax(pred, axis=1))
            self.csv_headers = ["epoch", "steps", *_MULTI_HEADERS]
            self.primary_metric = "f1_macro"
        _log(metrics)
        if output_path is not None and self.write_csv:
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *metrics.values()])
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    @staticmethod
    def binary_metrics(scores, labels) -> dict[str, float]:
        """Threshold-searched accuracy / F1 and average precision of ``[N]`` scores (higher = positive)."""
        acc, acc_threshold = _metrics.best_accuracy_and_threshold(scores, labels, True)
        f1, precision, recall, f1_threshold = _metrics.best_f1_and_threshold(scores, labels, True)
        return {
            "accuracy": acc,
            "accuracy_threshold": acc_threshold,
            "f1": f1,
            "f1_threshold": f1_threshold,
            "precision": precision,
            "recall": recall,
            "average_precision": _metrics.average_precision(labels, scores),
        }
