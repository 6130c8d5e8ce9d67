"""The evaluator protocol and the helpers every evaluator shares.

An evaluator is a callable ``evaluator(model, output_path=None, epoch=-1, steps=-1) -> dict`` with
``primary_metric`` (the key used for model selection) and ``greater_is_better``. It talks to the
model only through:

* ``model.encode(sentences, batch_size=..., show_progress_bar=..., convert_to_numpy=True,
  truncate_dim=..., [prompt_name=..., prompt=...])``, and ``encode_query`` / ``encode_document``
  where the reference uses them (falling back to ``encode`` when the model lacks them);
* ``model.similarity_fn_name`` (``None`` or missing means ``"cosine"``);
* optionally ``model.model_card_data.set_evaluation_metrics(evaluator, metrics, epoch, step)``.

So stcore_jax models, the PyTorch ``SentenceTransformer`` or any object with those methods can be
evaluated.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from stcore_jax.util.semantic_search import _to_array


class SentenceEvaluator:
    """Base class: subclasses implement ``__call__`` and set ``primary_metric``.

    ``greater_is_better`` tells checkpoint selection which direction is better (every built-in
    evaluator reports metrics where greater is better, e.g. ``negative_mse``).
    """

    def __init__(self):
        self.greater_is_better = True
        self.primary_metric = None

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        raise NotImplementedError

    def prefix_name_to_metrics(self, metrics: dict[str, Any], name: str) -> dict[str, Any]:
        """Prefix every key (and ``primary_metric``) with ``name + "_"``; values become floats."""

        def maybe_to_float(value):
            try:
                return float(value)
            except (TypeError, ValueError):
                return value

        if not name:
            return {key: maybe_to_float(value) for key, value in metrics.items()}
        metrics = {f"{name}_{key}": maybe_to_float(value) for key, value in metrics.items()}
        if self.primary_metric is not None and not self.primary_metric.startswith(name + "_"):
            self.primary_metric = f"{name}_{self.primary_metric}"
        return metrics

    def store_metrics_in_model_card_data(self, model, metrics: dict[str, Any], epoch: int = 0, step: int = 0) -> None:
        card = getattr(model, "model_card_data", None)
        if card is not None and hasattr(card, "set_evaluation_metrics"):
            card.set_evaluation_metrics(self, metrics, epoch, step)

    @property
    def description(self) -> str:
        """Human-readable name: ``BinaryClassificationEvaluator`` -> ``Binary Classification``."""
        class_name = type(self).__name__
        if "Evaluator" in class_name:
            class_name = class_name[: class_name.index("Evaluator")]
        return re.sub(r"([a-z])([A-Z])", r"\g<1> \g<2>", class_name)

    def get_config_dict(self) -> dict[str, Any]:
        """Configuration worth recording in a model card."""
        return {}


BaseEvaluator = SentenceEvaluator


def epoch_text(epoch: int, steps: int, truncate_dim: int | None = None) -> str:
    """The `` after epoch …`` fragment of the log lines."""
    if epoch != -1:
        text = f" after epoch {epoch}" if steps == -1 else f" in epoch {epoch} after {steps} steps"
    else:
        text = ""
    if truncate_dim is not None:
        text += f" (truncated to {truncate_dim})"
    return text


def similarity_name(model) -> str:
    """``model.similarity_fn_name`` as a plain string, ``"cosine"`` when unset."""
    name = getattr(model, "similarity_fn_name", None)
    if name is None:
        return "cosine"
    return getattr(name, "value", name)


def embed(
    model,
    sentences: Sequence[Any],
    *,
    kind: str | None = None,
    batch_size: int,
    show_progress_bar: bool | None,
    truncate_dim: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
    **kwargs,
) -> np.ndarray:
    """Encode ``sentences`` to a numpy ``[N, D]`` array.

    ``kind="query"`` / ``"document"`` use ``encode_query`` / ``encode_document`` when the model has
    them. Prompt arguments are only passed when set, so models without prompt support work too.
    """
    encode = model.encode
    if kind == "query":
        encode = getattr(model, "encode_query", model.encode)
    elif kind == "document":
        encode = getattr(model, "encode_document", model.encode)
    if prompt_name is not None:
        kwargs["prompt_name"] = prompt_name
    if prompt is not None:
        kwargs["prompt"] = prompt
    out = encode(
        list(sentences) if not isinstance(sentences, (list, np.ndarray)) else sentences,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        convert_to_numpy=True,
        truncate_dim=truncate_dim,
        **kwargs,
    )
    out = _to_array(out)
    return np.asarray(out)


def append_csv_row(output_path: str, csv_file: str, headers: list[str], row: list[Any]) -> None:
    """Append ``row`` to ``output_path/csv_file`` (``csv`` module), writing ``headers`` first if new."""
    os.makedirs(output_path, exist_ok=True)
    csv_path = os.path.join(output_path, csv_file)
    exists = os.path.isfile(csv_path)
    with open(csv_path, newline="", mode="a" if exists else "w", encoding="utf-8") as f:
        writer = csv.writer(f)
        if not exists:
            writer.writerow(headers)
        writer.writerow(row)


def append_plain_csv_row(output_path: str, csv_file: str, headers: list[str], row: list[Any]) -> None:
    """Like ``append_csv_row`` but joined with ``","`` and ``"\\n"`` (the retrieval evaluators' format)."""
    os.makedirs(output_path, exist_ok=True)
    csv_path = os.path.join(output_path, csv_file)
    exists = os.path.isfile(csv_path)
    with open(csv_path, mode="a" if exists else "w", encoding="utf-8") as f:
        if not exists:
            f.write(",".join(headers) + "\n")
        f.write(",".join(map(str, row)) + "\n")
