"""Training: the generic loop (trainer.py) and what it is built from: arguments, the loop state, the task
protocol a model family implements (task.py), samplers and the data feed, optimizer, the pure step,
checkpoints, callbacks. No model family is imported here: a family's trainer lives with the family
(``stcore_jax.sentence_transformer.SentenceTransformerTrainer``, also ``stcore_jax.SentenceTransformerTrainer``)."""

from stcore_jax.training.arguments import (
    BatchSamplers,
    MultiDatasetBatchSamplers,
    SentenceTransformerTrainingArguments,
    TrainingArguments,
)
from stcore_jax.training.callbacks import EarlyStoppingCallback, TrainerCallback, TrainerControl
from stcore_jax.training.nonfinite import NonFiniteLossError
from stcore_jax.training.preemption import TrainingInterrupted
from stcore_jax.training.state import TrainerState
from stcore_jax.training.task import Task
from stcore_jax.training.trainer import Trainer

__all__ = [
    "BatchSamplers",
    "EarlyStoppingCallback",
    "MultiDatasetBatchSamplers",
    "NonFiniteLossError",
    "SentenceTransformerTrainingArguments",
    "Task",
    "Trainer",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "TrainingArguments",
    "TrainingInterrupted",
]

