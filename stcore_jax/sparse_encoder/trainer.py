"""``SparseEncoderTrainer``: the generic loop (stcore_jax/training/trainer.py) with the SPLADE task
(sparse_encoder/task.py), under sentence-transformers' constructor."""

from __future__ import annotations

import logging

from stcore_jax.distributed import maybe_initialize_distributed
from stcore_jax.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
from stcore_jax.sparse_encoder.model import SparseEncoder
from stcore_jax.sparse_encoder.task import SparseEncoderTask
from stcore_jax.sparse_encoder.training_args import SparseEncoderTrainingArguments
from stcore_jax.training.trainer import Trainer

logger = logging.getLogger(__name__)


def _check_model(model) -> None:
    if not isinstance(model, SparseEncoder):
        raise ValueError(
            f"SparseEncoderTrainer trains a stcore_jax.SparseEncoder, got a {type(model).__name__}: a dense model has "
            f"no vocabulary-sized output for the sparse losses. Load the checkpoint with "
            f"stcore_jax.SparseEncoder(path) (a *ForMaskedLM checkpoint gives a SPLADE model), or train the "
            f"{type(model).__name__} with its own trainer.")


class SparseEncoderTrainer(Trainer):
    """Train a :class:`stcore_jax.SparseEncoder` (same constructor as sentence-transformers')."""

    def __init__(self, model=None, args: SparseEncoderTrainingArguments | None = None, train_dataset=None,
                 eval_dataset=None, loss=None, evaluator=None, data_collator=None, processing_class=None,
                 model_init=None, compute_metrics=None, callbacks=None, optimizers=(None, None), **unused):
        maybe_initialize_distributed()  # before model_init touches the devices
        if model is None:
            if model_init is None:
                raise ValueError("SparseEncoderTrainer needs model= (or model_init=)")
            model = model_init()
        _check_model(model)
        args = args if args is not None else SparseEncoderTrainingArguments(output_dir="tmp_trainer")
        if compute_metrics is not None:
            logger.warning("compute_metrics is not supported by SparseEncoderTrainer; use an evaluator")
        schedulers = [c for c in callbacks or [] if isinstance(c, SpladeRegularizerWeightSchedulerCallback)]
        super().__init__(SparseEncoderTask(model, args, schedulers), args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, loss=loss, evaluator=evaluator, callbacks=callbacks,
                         optimizers=optimizers)

    def _compute_model(self):
        return self.task.compute_model()

    def log(self, logs: dict):
        """Training logs carry the regulariser weights of the last step, as the reference's warm-up callback
        adds them."""
        if "grad_norm" in logs:
            logs = {**logs, **self.task.regularizer_weights_to_log(self.loss, self.state.global_step)}
        super().log(logs)
