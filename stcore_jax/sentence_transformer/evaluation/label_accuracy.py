"""LabelAccuracyEvaluator: accuracy of a softmax head over pair features (the SoftmaxLoss classifier)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, embed, epoch_text

logger = logging.getLogger(__name__)


def _examples(data) -> tuple[list, list, list]:
    """``(texts_a, texts_b, labels)`` from examples, batches of examples, a dataset or columns."""
    if hasattr(data, "dataset") and not isinstance(data, Mapping):  # a torch DataLoader
        data = data.dataset
    if hasattr(data, "column_names"):  # datasets.Dataset: first two columns are the texts
        columns = list(data.column_names)
        label = next(c for c in ("label", "labels", "score", "scores") if c in columns)
        texts = [c for c in columns if c != label]
        return list(data[texts[0]]), list(data[texts[1]]), list(data[label])
    a, b, labels = [], [], []

    def add(example):
        if hasattr(example, "texts"):  # InputExample
            a.append(example.texts[0])
            b.append(example.texts[1])
            labels.append(example.label)
        elif isinstance(example, Mapping):
            label = next(c for c in ("label", "labels", "score", "scores") if c in example)
            texts = [v for k, v in example.items() if k != label]
            a.append(texts[0])
            b.append(texts[1])
            labels.append(example[label])
        else:
            for item in example:  # a batch
                add(item)

    for example in data:
        add(example)
    return a, b, labels


class LabelAccuracyEvaluator(SentenceEvaluator):
    """Accuracy of ``argmax(classifier(features(u, v)))`` against the labels.

    Args:
      dataloader: the labelled pairs: an iterable of ``InputExample`` (``texts=[a, b]``, ``label``)
        or of batches of them (a torch ``DataLoader`` is read through its ``.dataset``), rows
        ``{"sentence1", "sentence2", "label"}``, or a ``datasets.Dataset`` whose first two
        non-label columns are the texts.
      name: metric prefix and CSV suffix.
      softmax_model: the head. Either a params pytree ``{"classifier": {"kernel": [n*D, L],
        "bias": [L]}}`` (Flax layout), or an object with such a ``params`` attribute; the object
        may also carry ``concatenation_sent_rep`` / ``concatenation_sent_difference`` /
        ``concatenation_sent_multiplication`` flags (defaults True / True / False, as
        ``SoftmaxLoss``), which the keyword arguments below override.
      write_csv: write ``accuracy_evaluation[_{name}]_results.csv``.
      batch_size: encoding batch size (default: the dataloader's ``batch_size``, else 32).

    The features are ``concat([u, v] if rep, |u - v| if difference, u * v if multiplication)``.
    Primary metric: ``accuracy``.
    """

    def __init__(
        self,
        dataloader: Iterable[Any],
        name: str = "",
        softmax_model: Any = None,
        write_csv: bool = True,
        *,
        batch_size: int | None = None,
        concatenation_sent_rep: bool | None = None,
        concatenation_sent_difference: bool | None = None,
        concatenation_sent_multiplication: bool | None = None,
    ):
        super().__init__()
        self.dataloader = dataloader
        self.name = name
        self.softmax_model = softmax_model
        self.batch_size = batch_size or getattr(dataloader, "batch_size", None) or 32
        flags = {
            "concatenation_sent_rep": (concatenation_sent_rep, True),
            "concatenation_sent_difference": (concatenation_sent_difference, True),
            "concatenation_sent_multiplication": (concatenation_sent_multiplication, False),
        }
        for attr, (given, default) in flags.items():
            setattr(self, attr, given if given is not None else getattr(softmax_model, attr, default))
        self.write_csv = write_csv
        self.csv_file = "accuracy_evaluation" + (f"_{name}" if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps", "accuracy"]
        self.primary_metric = "accuracy"

    def _classifier(self) -> tuple[jnp.ndarray, jnp.ndarray]:
        params = self.softmax_model
        if not isinstance(params, Mapping):
            params = params.params
        head = params["classifier"]
        return jnp.asarray(head["kernel"], jnp.float32), jnp.asarray(head["bias"], jnp.float32)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(f"Evaluation on the {self.name} dataset{epoch_text(epoch, steps) or ''}:")
        texts_a, texts_b, labels = _examples(self.dataloader)
        u = jnp.asarray(embed(model, texts_a, batch_size=self.batch_size, show_progress_bar=False), jnp.float32)
        v = jnp.asarray(embed(model, texts_b, batch_size=self.batch_size, show_progress_bar=False), jnp.float32)
        features = []
        if self.concatenation_sent_rep:
            features += [u, v]
        if self.concatenation_sent_difference:
            features.append(jnp.abs(u - v))
        if self.concatenation_sent_multiplication:
            features.append(u * v)
        kernel, bias = self._classifier()
        logits = jnp.matmul(jnp.concatenate(features, axis=1), kernel, precision="highest") + bias
        predicted = np.asarray(jnp.argmax(logits, axis=1))
        correct = int(np.sum(predicted == np.asarray(labels).reshape(-1)))
        accuracy = correct / len(labels)
        logger.info(f"Accuracy: {accuracy:.4f} ({correct}/{len(labels)})\n")
        if output_path is not None and self.write_csv:
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, accuracy])
        metrics = self.prefix_name_to_metrics({"accuracy": accuracy}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
