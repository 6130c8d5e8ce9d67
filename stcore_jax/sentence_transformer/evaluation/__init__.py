"""Evaluators: score a model during or after training (sentence-transformers' ``evaluation``).

Every evaluator is ``evaluator(model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]``
with a ``primary_metric``; see ``evaluator.py`` for what they need from a model.
"""

from stcore_jax.base.evaluation.evaluator import BaseEvaluator, SentenceEvaluator
from stcore_jax.base.evaluation.sequential import SequentialEvaluator
from stcore_jax.sentence_transformer.evaluation.binary_classification import BinaryClassificationEvaluator
from stcore_jax.sentence_transformer.evaluation.embedding_similarity import EmbeddingSimilarityEvaluator
from stcore_jax.sentence_transformer.evaluation.information_retrieval import InformationRetrievalEvaluator
from stcore_jax.sentence_transformer.evaluation.label_accuracy import LabelAccuracyEvaluator
from stcore_jax.sentence_transformer.evaluation.mse import MSEEvaluator, MSEEvaluatorFromDataFrame
from stcore_jax.sentence_transformer.evaluation.nano_beir import NanoBEIREvaluator
from stcore_jax.sentence_transformer.evaluation.paraphrase_mining import (
    ParaphraseMiningEvaluator,
    paraphrase_mining_embeddings,
)
from stcore_jax.sentence_transformer.evaluation.reranking import RerankingEvaluator
from stcore_jax.sentence_transformer.evaluation.translation import TranslationEvaluator
from stcore_jax.sentence_transformer.evaluation.triplet import TripletEvaluator
from stcore_jax.similarity import SimilarityFunction

__all__ = [
    "BaseEvaluator",
    "SentenceEvaluator",
    "SimilarityFunction",
    "BinaryClassificationEvaluator",
    "EmbeddingSimilarityEvaluator",
    "InformationRetrievalEvaluator",
    "LabelAccuracyEvaluator",
    "MSEEvaluator",
    "MSEEvaluatorFromDataFrame",
    "NanoBEIREvaluator",
    "ParaphraseMiningEvaluator",
    "RerankingEvaluator",
    "SequentialEvaluator",
    "TranslationEvaluator",
    "TripletEvaluator",
    "paraphrase_mining_embeddings",
]
