"""Utilities: STS file reading, quantization, semantic search, hard-negative mining."""

from stcore_jax.util.hard_negatives import mine_hard_negatives
from stcore_jax.util.quantization import quantize_embeddings
from stcore_jax.util.semantic_search import semantic_search
from stcore_jax.util.stsb import read_sts

__all__ = ["mine_hard_negatives", "quantize_embeddings", "read_sts", "semantic_search"]
