"""CrossEncoder evaluators (sentence-transformers' ``cross_encoder.evaluation``).

Each is ``evaluator(model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]`` with a
``primary_metric``; they talk to the model only through ``model.predict`` and ``model.num_labels``.
"""

from stcore_jax.cross_encoder.evaluation.classification import CrossEncoderClassificationEvaluator
from stcore_jax.cross_encoder.evaluation.correlation import CrossEncoderCorrelationEvaluator
from stcore_jax.cross_encoder.evaluation.nano_beir import CrossEncoderNanoBEIREvaluator
from stcore_jax.cross_encoder.evaluation.reranking import CrossEncoderRerankingEvaluator

__all__ = [
    "CrossEncoderClassificationEvaluator",
    "CrossEncoderCorrelationEvaluator",
    "CrossEncoderRerankingEvaluator",
    "CrossEncoderNanoBEIREvaluator",
]
