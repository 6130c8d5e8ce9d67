"""Training: arguments, data rules and samplers, optimizer, the pure step, checkpoints, the trainer."""

from stcore_jax.training.arguments import (
    BatchSamplers,
    MultiDatasetBatchSamplers,
    SentenceTransformerTrainingArguments,
)
from stcore_jax.training.callbacks import EarlyStoppingCallback, TrainerCallback, TrainerControl, TrainerState
from stcore_jax.training.trainer import NonFiniteLossError, SentenceTransformerTrainer

__all__ = [
    "BatchSamplers",
    "EarlyStoppingCallback",
    "MultiDatasetBatchSamplers",
    "NonFiniteLossError",
    "SentenceTransformerTrainer",
    "SentenceTransformerTrainingArguments",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
]
