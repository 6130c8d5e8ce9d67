"""TripletEvaluator: is the anchor closer to its positive than to its negative?"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, embed, epoch_text, similarity_name
from stcore_jax.similarity import SimilarityFunction

logger = logging.getLogger(__name__)

_FUNCTIONS = ("cosine", "dot", "manhattan", "euclidean")


class TripletEvaluator(SentenceEvaluator):
    """Accuracy of ``sim(anchor, positive) > sim(anchor, negative) + margin``.

    Anchors are embedded with ``encode_query``, positives and negatives with ``encode_document``
    (``encode`` when the model has no such methods). Reports ``{fn}_accuracy`` for each similarity
    function (the model's by default; ``max_accuracy`` for several). Primary metric:
    ``{main_similarity_function}_accuracy``, else ``max_accuracy`` / ``{fn}_accuracy``.

    Args:
      anchors, positives, negatives: aligned lists of inputs.
      main_similarity_function: selects the primary metric (and the function when
        ``similarity_fn_names`` is not given).
      margin: a float for every function, or ``{fn: margin}``; default 0.
      name, batch_size, show_progress_bar, write_csv, truncate_dim, similarity_fn_names: as in
        sentence-transformers. ``main_distance_function`` is the deprecated alias.
    """

    def __init__(
        self,
        anchors: Sequence[Any],
        positives: Sequence[Any],
        negatives: Sequence[Any],
        main_similarity_function: str | SimilarityFunction | None = None,
        margin: float | dict[str, float] | None = None,
        name: str = "",
        batch_size: int = 16,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        truncate_dim: int | None = None,
        similarity_fn_names: list[Literal["cosine", "dot", "euclidean", "manhattan"]] | None = None,
        main_distance_function: str | SimilarityFunction | None = "deprecated",
    ):
        super().__init__()
        assert len(anchors) == len(positives) == len(negatives)
        self.anchors = anchors
        self.positives = positives
        self.negatives = negatives
        self.name = name
        self.truncate_dim = truncate_dim
        if main_distance_function != "deprecated" and main_similarity_function is None:
            logger.warning("'main_distance_function' is deprecated; use 'main_similarity_function' instead.")
            main_similarity_function = main_distance_function
        self.main_similarity_function = (
            SimilarityFunction(main_similarity_function) if main_similarity_function else None
        )
        self.similarity_fn_names = list(similarity_fn_names or [])
        if not self.similarity_fn_names and self.main_similarity_function is not None:
            self.similarity_fn_names = [self.main_similarity_function.value]
        if unknown := sorted(set(self.similarity_fn_names) - set(_FUNCTIONS)):
            raise ValueError(
                f"`similarity_fn_names` got unexpected names {unknown}, expected names in {list(_FUNCTIONS)}."
            )
        if margin is None:
            self.margin = dict.fromkeys(_FUNCTIONS, 0)
        elif isinstance(margin, (float, int)):
            self.margin = dict.fromkeys(_FUNCTIONS, margin)
        elif isinstance(margin, dict):
            if unknown := sorted(set(margin) - set(_FUNCTIONS)):
                raise ValueError(f"`margin` got unexpected keys {unknown}, expected keys in {list(_FUNCTIONS)}.")
            self.margin = {**dict.fromkeys(_FUNCTIONS, 0), **margin}
        else:
            raise ValueError(f"`margin` should be a float or a dictionary with keys in {list(_FUNCTIONS)}.")
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.csv_file = "triplet_evaluation" + (f"_{name}" if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps"]
        self.write_csv = write_csv
        self._append_csv_headers(self.similarity_fn_names)

    def _append_csv_headers(self, similarity_fn_names):
        self.csv_headers += [f"accuracy_{fn}" for fn in similarity_fn_names]

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        when = epoch_text(epoch, steps, self.truncate_dim)
        logger.info(f"TripletEvaluator: Evaluating the model on the {self.name} dataset{when}:")
        emb_a = self.embed_inputs(model, self.anchors, encode_fn_name="query")
        emb_p = self.embed_inputs(model, self.positives, encode_fn_name="document")
        emb_n = self.embed_inputs(model, self.negatives, encode_fn_name="document")
        if not self.similarity_fn_names:
            self.similarity_fn_names = [similarity_name(model)]
            self._append_csv_headers(self.similarity_fn_names)

        metrics = {}
        for fn_name in self.similarity_fn_names:
            pairwise = SimilarityFunction.to_similarity_pairwise_fn(fn_name)
            positive, negative = pairwise(emb_a, emb_p), pairwise(emb_a, emb_n)
            accuracy = float(jnp.mean((positive > negative + self.margin[fn_name]).astype(jnp.float32)))
            metrics[f"{fn_name}_accuracy"] = accuracy
            logger.info(f"Accuracy {fn_name.capitalize()} Similarity:\t{accuracy:.2%}")

        if output_path is not None and self.write_csv:
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *metrics.values()])

        if len(self.similarity_fn_names) > 1:
            metrics["max_accuracy"] = max(metrics.values())
        if self.main_similarity_function:
            self.primary_metric = f"{self.main_similarity_function.value}_accuracy"
        elif len(self.similarity_fn_names) > 1:
            self.primary_metric = "max_accuracy"
        else:
            self.primary_metric = f"{self.similarity_fn_names[0]}_accuracy"

        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, **kwargs) -> np.ndarray:
        return embed(
            model,
            sentences,
            kind=encode_fn_name,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            truncate_dim=self.truncate_dim,
            **kwargs,
        )

    def get_config_dict(self):
        config = {}
        if self.margin != dict.fromkeys(_FUNCTIONS, 0):
            config["margin"] = self.margin
        if self.truncate_dim is not None:
            config["truncate_dim"] = self.truncate_dim
        return config
