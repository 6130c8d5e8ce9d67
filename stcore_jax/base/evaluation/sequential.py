"""SequentialEvaluator: run several evaluators and combine their primary scores."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator


class SequentialEvaluator(SentenceEvaluator):
    """Runs ``evaluators`` in order and returns the union of their metrics plus ``sequential_score``.

    ``sequential_score = main_score_function([primary score of each evaluator])`` (default: the
    last one); it is the primary metric. An evaluator returning a bare float contributes the key
    ``evaluator_{i}``.
    """

    def __init__(
        self,
        evaluators: Iterable[SentenceEvaluator],
        main_score_function: Callable[[list[float]], float] = lambda scores: scores[-1],
    ):
        super().__init__()
        self.evaluators = list(evaluators)
        self.main_score_function = main_score_function

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        evaluations, scores = [], []
        for i, evaluator in enumerate(self.evaluators):
            evaluation = evaluator(model, output_path, epoch, steps)
            if not isinstance(evaluation, dict):
                scores.append(evaluation)
                evaluation = {f"evaluator_{i}": evaluation}
            elif getattr(evaluator, "primary_metric", None) is not None:
                scores.append(evaluation[evaluator.primary_metric])
            else:
                scores.append(evaluation[next(iter(evaluation))])
            evaluations.append(evaluation)
        self.primary_metric = "sequential_score"
        results = {key: value for evaluation in evaluations for key, value in evaluation.items()}
        results["sequential_score"] = self.main_score_function(scores) if scores else 0.0
        return results
