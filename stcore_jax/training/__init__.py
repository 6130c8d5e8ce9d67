"""Training: arguments, data rules and samplers, optimizer, the pure step, checkpoints, the trainer."""

from stcore_jax.training.arguments import (
    BatchSamplers,
    MultiDatasetBatchSamplers,
    SentenceTransformerTrainingArguments,
)
from stcore_jax.training.callbacks import EarlyStoppingCallback, TrainerCallback, TrainerControl, TrainerState
from stcore_jax.training.nonfinite import NonFiniteLossError
from stcore_jax.training.preemption import TrainingInterrupted
from stcore_jax.training.trainer import SentenceTransformerTrainer

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
    "TrainingInterrupted",
]
