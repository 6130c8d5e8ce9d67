"""The SentenceTransformer (bi-encoder) family: the model, its losses and evaluators, its task and trainer."""

from stcore_jax.sentence_transformer.model import SentenceTransformer
from stcore_jax.sentence_transformer.trainer import SentenceTransformerTrainer
from stcore_jax.training.arguments import SentenceTransformerTrainingArguments

__all__ = ["SentenceTransformer", "SentenceTransformerTrainer", "SentenceTransformerTrainingArguments"]
