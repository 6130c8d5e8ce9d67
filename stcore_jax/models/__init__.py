"""Encoders (one architecture per file) and the sentence-transformers module pipeline."""

from stcore_jax.models.dense import Dense
from stcore_jax.models.normalize import Normalize
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.transformer import Transformer

__all__ = ["Dense", "Normalize", "Pooling", "Transformer"]
