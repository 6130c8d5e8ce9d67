"""The SentenceTransformer (bi-encoder) family: the model, its losses and evaluators, and its trainer."""

from stcore_jax.sentence_transformer.model import SentenceTransformer

__all__ = ["SentenceTransformer"]
