"""CrossEncoderCorrelationEvaluator: Pearson / Spearman of ``predict`` scores against gold scores."""

from __future__ import annotations

import logging

from stcore_jax.base.evaluation import metrics as _metrics
from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, epoch_text
from stcore_jax.cross_encoder.evaluation._common import default_progress_bar, predict_scores

logger = logging.getLogger(__name__)


class CrossEncoderCorrelationEvaluator(SentenceEvaluator):
    """Correlate ``model.predict(sentence_pairs)`` (``[N]``, after the model's activation) with ``scores``.

    Metrics ``pearson`` and ``spearman`` (scipy semantics: average ranks for ties), prefixed with
    ``{name}_`` when ``name`` is set; primary metric ``spearman``. CSV:
    ``CrossEncoderCorrelationEvaluator[_name]_results.csv`` with
    ``epoch, steps, Pearson_Correlation, Spearman_Correlation``.

    Args:
      sentence_pairs: ``[N]`` pairs of two strings.
      scores: ``[N]`` gold scores.
      name: prefix of the metric keys and the CSV file name.
      prompt_name: key of ``model.prompts`` passed to ``predict``.
      batch_size: ``predict`` batch size.
      show_progress_bar: ``None`` shows it when logging is at INFO or DEBUG.
      write_csv: append a row to the CSV when ``output_path`` is given.
    """

    def __init__(
        self,
        sentence_pairs: list[list[str]],
        scores: list[float],
        name: str = "",
        prompt_name: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
    ):
        super().__init__()
        self.sentence_pairs = sentence_pairs
        self.scores = scores
        self.name = name
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.show_progress_bar = default_progress_bar(show_progress_bar)
        self.write_csv = write_csv
        self.csv_file = "CrossEncoderCorrelationEvaluator" + ("_" + name if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps", "Pearson_Correlation", "Spearman_Correlation"]
        self.primary_metric = "spearman"

    @classmethod
    def from_input_examples(cls, examples, **kwargs):
        """Build from objects with ``texts`` (a pair) and ``label`` (the gold score)."""
        return cls([ex.texts for ex in examples], [ex.label for ex in examples], **kwargs)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(f"CrossEncoderCorrelationEvaluator: Evaluating the model on {self.name} dataset"
                    f"{epoch_text(epoch, steps)}:")
        pred = predict_scores(model, self.sentence_pairs, prompt_name=self.prompt_name, batch_size=self.batch_size,
                              show_progress_bar=self.show_progress_bar)
        eval_pearson = _metrics.pearson(self.scores, pred)
        eval_spearman = _metrics.spearman(self.scores, pred)
        logger.info(f"Correlation:\tPearson: {eval_pearson:.4f}\tSpearman: {eval_spearman:.4f}")
        if output_path is not None and self.write_csv:
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, eval_pearson, eval_spearman])
        metrics = self.prefix_name_to_metrics({"pearson": eval_pearson, "spearman": eval_spearman}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
