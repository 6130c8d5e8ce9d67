"""``CrossEncoderTrainer``: the generic loop (stcore_jax/training/trainer.py) with the reranker task
(cross_encoder/task.py), under sentence-transformers' constructor."""

from __future__ import annotations

import logging

from stcore_jax.cross_encoder.task import CrossEncoderTask
from stcore_jax.cross_encoder.training_args import CrossEncoderTrainingArguments
from stcore_jax.distributed import maybe_initialize_distributed
from stcore_jax.training.stream import is_stream
from stcore_jax.training.trainer import Trainer

logger = logging.getLogger(__name__)


def _reject_streams(train_dataset, eval_dataset):
    """The reference rejects IterableDatasets (its collator returns raw text); so do we, with its message."""
    for what, ds in (("train", train_dataset), ("eval", eval_dataset)):
        if is_stream(ds) or (isinstance(ds, dict) and any(is_stream(d) for d in ds.values())):
            raise ValueError(f"CrossEncoderTrainer does not support an IterableDataset for the `{what}_dataset`. "
                             f"Please convert the dataset to a `Dataset` or `DatasetDict` before passing it to the "
                             f"trainer.")


class CrossEncoderTrainer(Trainer):
    """Train a :class:`stcore_jax.CrossEncoder` (same constructor as sentence-transformers')."""

    def __init__(self, model=None, args: CrossEncoderTrainingArguments | None = None, train_dataset=None,
                 eval_dataset=None, loss=None, evaluator=None, data_collator=None, processing_class=None,
                 model_init=None, compute_metrics=None, callbacks=None, optimizers=(None, None), **unused):
        maybe_initialize_distributed()  # before model_init touches the devices
        _reject_streams(train_dataset, eval_dataset)
        if model is None:
            if model_init is None:
                raise ValueError("CrossEncoderTrainer needs model= (or model_init=)")
            model = model_init()
        if not hasattr(model, "num_labels") or not hasattr(model, "predict"):
            raise ValueError(f"CrossEncoderTrainer trains a stcore_jax.CrossEncoder, got {type(model).__name__}")
        args = args if args is not None else CrossEncoderTrainingArguments(output_dir="tmp_trainer")
        if compute_metrics is not None:
            logger.warning("compute_metrics is not supported by CrossEncoderTrainer; use an evaluator")
        super().__init__(CrossEncoderTask(model, args), args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         loss=loss, evaluator=evaluator, callbacks=callbacks, optimizers=optimizers)

    def _compute_model(self):
        return self.task.compute_model()
