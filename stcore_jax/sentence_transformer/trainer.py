"""``SentenceTransformerTrainer``: the generic loop (stcore_jax/training/trainer.py) with the bi-encoder
task (sentence_transformer/task.py), under sentence-transformers' constructor."""

from __future__ import annotations

import logging

from stcore_jax.distributed import maybe_initialize_distributed
from stcore_jax.sentence_transformer.task import SentenceTransformerTask
from stcore_jax.training.arguments import SentenceTransformerTrainingArguments
from stcore_jax.training.trainer import Trainer

logger = logging.getLogger(__name__)


class SentenceTransformerTrainer(Trainer):
    """Train a :class:`stcore_jax.SentenceTransformer` (same constructor as sentence-transformers)."""

    def __init__(self, model=None, args: SentenceTransformerTrainingArguments | None = None, train_dataset=None,
                 eval_dataset=None, loss=None, evaluator=None, callbacks=None, optimizers=(None, None),
                 model_init=None, data_collator=None, processing_class=None, tokenizer=None, compute_metrics=None,
                 **unused):
        maybe_initialize_distributed()  # before model_init touches the devices
        if model is None:
            if model_init is None:
                raise ValueError("SentenceTransformerTrainer needs model= (or model_init=)")
            model = model_init()
        args = args if args is not None else SentenceTransformerTrainingArguments(output_dir="tmp_trainer")
        if compute_metrics is not None:
            logger.warning("compute_metrics is not supported by SentenceTransformerTrainer; use an evaluator")
        super().__init__(SentenceTransformerTask(model, args), args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, loss=loss, evaluator=evaluator, callbacks=callbacks,
                         optimizers=optimizers)

    def _compute_model(self):
        """The model the compiled steps run (``SentenceTransformerTask.compute_model``: bf16 view or itself)."""
        return self.task.compute_model()
