"""stcore_jax: Sentence Transformers training in JAX/Flax."""

__version__ = "0.1.0"

from stcore_jax.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments  # noqa: E402
from stcore_jax.models import Asym, Dense, Normalize, Pooling, Router, StaticEmbedding, Transformer  # noqa: E402
from stcore_jax.models.lora import LoraConfig  # noqa: E402
from stcore_jax.sentence_transformer import SentenceTransformer  # noqa: E402
from stcore_jax.sentence_transformer.trainer import SentenceTransformerTrainer  # noqa: E402
from stcore_jax.similarity import SimilarityFunction  # noqa: E402
from stcore_jax.sparse_encoder import SparseEncoder, SparseEncoderTrainer, SparseEncoderTrainingArguments  # noqa: E402
from stcore_jax.training import (  # noqa: E402
    BatchSamplers,
    MultiDatasetBatchSamplers,
    SentenceTransformerTrainingArguments,
)

__all__ = [
    "Asym",
    "BatchSamplers",
    "CrossEncoder",
    "CrossEncoderTrainer",
    "CrossEncoderTrainingArguments",
    "Dense",
    "LoraConfig",
    "MultiDatasetBatchSamplers",
    "Normalize",
    "Pooling",
    "Router",
    "SentenceTransformer",
    "SentenceTransformerTrainer",
    "SentenceTransformerTrainingArguments",
    "SimilarityFunction",
    "SparseEncoder",
    "SparseEncoderTrainer",
    "SparseEncoderTrainingArguments",
    "StaticEmbedding",
    "Transformer",
]
