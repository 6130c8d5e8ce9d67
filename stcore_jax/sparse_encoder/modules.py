"""The SparseEncoder modules under sentence-transformers 6.x's import path (``sentence_transformers.sparse_encoder.
modules``; v5's ``sparse_encoder.models`` is :mod:`stcore_jax.sparse_encoder.models`), so a script ports by changing
the package name. The implementations live in :mod:`stcore_jax.models`."""

from stcore_jax.models.dense import Dense  # noqa: F401
from stcore_jax.models.mlm_transformer import MLMTransformer  # noqa: F401
from stcore_jax.models.router import Asym, Router  # noqa: F401
from stcore_jax.models.sparse_autoencoder import SparseAutoEncoder  # noqa: F401
from stcore_jax.models.sparse_static_embedding import SparseStaticEmbedding  # noqa: F401
from stcore_jax.models.splade_pooling import SpladePooling  # noqa: F401
from stcore_jax.models.transformer import Transformer  # noqa: F401

__all__ = ["Asym", "Dense", "MLMTransformer", "Router", "SparseAutoEncoder", "SparseStaticEmbedding", "SpladePooling",
           "Transformer"]
