"""Encoders (one architecture per file) and the sentence-transformers module pipeline."""

from stcore_jax.models.dense import Dense
from stcore_jax.models.mlm_transformer import MLMTransformer
from stcore_jax.models.normalize import Normalize
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.router import Asym, Router
from stcore_jax.models.splade_pooling import SpladePooling
from stcore_jax.models.static_embedding import StaticEmbedding
from stcore_jax.models.transformer import Transformer

__all__ = ["Asym", "Dense", "MLMTransformer", "Normalize", "Pooling", "Router", "SpladePooling", "StaticEmbedding",
           "Transformer"]
