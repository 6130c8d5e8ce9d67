"""MSEEvaluator and MSEEvaluatorFromDataFrame: distance of student embeddings to teacher embeddings."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, embed, epoch_text


def _mse_x100(a, b) -> float:
    """``100 * mean((a - b)^2)`` over all elements, on device in float32."""
    return float(jnp.mean((jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)) ** 2) * 100)


logger = logging.getLogger(__name__)


class MSEEvaluator(SentenceEvaluator):
    """``negative_mse = -100 * mean((teacher.encode(source) - model.encode(target))^2)``.

    The teacher embeddings are computed once, at construction. Primary metric: ``negative_mse``
    (negated so that greater is better).
    """

    def __init__(
        self,
        source_sentences: list[str],
        target_sentences: list[str],
        teacher_model=None,
        show_progress_bar: bool = False,
        batch_size: int = 32,
        name: str = "",
        write_csv: bool = True,
        truncate_dim: int | None = None,
    ):
        super().__init__()
        if len(source_sentences) != len(target_sentences):
            raise ValueError(
                f"source_sentences ({len(source_sentences)}) and target_sentences ({len(target_sentences)}) "
                "must have the same length."
            )
        self.truncate_dim = truncate_dim
        self.target_sentences = target_sentences
        self.show_progress_bar = show_progress_bar
        self.batch_size = batch_size
        self.name = name
        self.csv_file = "mse_evaluation_" + name + "_results.csv"
        self.csv_headers = ["epoch", "steps", "MSE"]
        self.write_csv = write_csv
        self.primary_metric = "negative_mse"
        self.source_embeddings = self.embed_inputs(teacher_model, source_sentences)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        target_embeddings = self.embed_inputs(model, self.target_sentences)
        mse = _mse_x100(self.source_embeddings, target_embeddings)
        when = epoch_text(epoch, steps, self.truncate_dim)
        logger.info(f"MSE evaluation (lower = better) on the {self.name} dataset{when}:")
        logger.info(f"MSE (*100):\t{mse:4f}")
        if output_path is not None and self.write_csv:
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, mse])
        metrics = self.prefix_name_to_metrics({"negative_mse": -mse}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def embed_inputs(self, model, sentences, **kwargs) -> np.ndarray:
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
        return "Knowledge Distillation"

    def get_config_dict(self):
        return {"truncate_dim": self.truncate_dim} if self.truncate_dim is not None else {}


class MSEEvaluatorFromDataFrame(SentenceEvaluator):
    """Mean over language pairs of the teacher/student MSE (x100), from rows ``{lang: sentence}``.

    ``combinations = [("en", "de"), …]``: the source-language sentence goes to the teacher (once,
    at construction), the target-language one to the evaluated model.
    """

    def __init__(
        self,
        dataframe: list[dict[str, str]],
        teacher_model,
        combinations: list[tuple[str, str]],
        batch_size: int = 8,
        name: str = "",
        write_csv: bool = True,
        truncate_dim: int | None = None,
    ):
        super().__init__()
        self.combinations = combinations
        self.name = name
        self.batch_size = batch_size
        self.csv_file = "mse_evaluation" + (f"_{name}" if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps"]
        self.primary_metric = "negative_mse"
        self.write_csv = write_csv
        self.truncate_dim = truncate_dim
        self.data = {}
        all_sources = set()
        for src, trg in combinations:
            rows = [r for r in dataframe if r[src].strip() != "" and r[trg].strip() != ""]
            all_sources.update(r[src] for r in rows)
            self.data[(src, trg)] = ([r[src] for r in rows], [r[trg] for r in rows])
            self.csv_headers.append(f"{src}-{trg}")
        all_sources = list(all_sources)
        embeddings = self.embed_inputs(teacher_model, all_sources)
        self.teacher_embeddings = dict(zip(all_sources, embeddings))

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        mse_scores = []
        for src, trg in self.combinations:
            src_sentences, trg_sentences = self.data[(src, trg)]
            src_emb = np.asarray([self.teacher_embeddings[s] for s in src_sentences])
            mse_scores.append(_mse_x100(src_emb, self.embed_inputs(model, trg_sentences)))
            logger.info(f"MSE evaluation on {self.name} dataset - {src}-{trg}:\nMSE (*100):\t{mse_scores[-1]:4f}")
        if output_path is not None and self.write_csv:
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *mse_scores])
        metrics = self.prefix_name_to_metrics({"negative_mse": -float(np.mean(mse_scores))}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def embed_inputs(self, model, sentences, **kwargs) -> np.ndarray:
        return embed(
            model,
            sentences,
            batch_size=self.batch_size,
            show_progress_bar=None,
            truncate_dim=self.truncate_dim,
            **kwargs,
        )

    @property
    def description(self) -> str:
        return "Knowledge Distillation"
