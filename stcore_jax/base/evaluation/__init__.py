"""Evaluator base class, the sequential evaluator and ranking metrics shared by every family."""

from stcore_jax.base.evaluation.evaluator import BaseEvaluator, SentenceEvaluator
from stcore_jax.base.evaluation.sequential import SequentialEvaluator

__all__ = ["BaseEvaluator", "SentenceEvaluator", "SequentialEvaluator"]
