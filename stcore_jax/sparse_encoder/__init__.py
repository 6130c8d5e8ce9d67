"""The SparseEncoder family (sentence-transformers' ``SparseEncoder``): SPLADE models over the shared pipeline:
the model and inference (``model.py``), the losses (``losses/``), the trainer (``trainer.py``, ``task.py``)."""

from stcore_jax.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback  # noqa: E402
from stcore_jax.sparse_encoder.model import SparseEncoder  # noqa: E402
from stcore_jax.sparse_encoder.trainer import SparseEncoderTrainer  # noqa: E402
from stcore_jax.sparse_encoder.training_args import SparseEncoderTrainingArguments  # noqa: E402

__all__ = ["SparseEncoder", "SparseEncoderTrainer", "SparseEncoderTrainingArguments",
           "SpladeRegularizerWeightSchedulerCallback"]
