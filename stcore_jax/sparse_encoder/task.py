"""``SparseEncoderTask``: the SPLADE family's side of training (the protocol is stcore_jax/training/task.py).

A SparseEncoder trains like a bi-encoder (sentence-transformers' SparseEncoderTrainer is the base trainer with
the base collator): text columns are tokenized per column (prompts, ``router_mapping`` routes), embedded into
``[B, V]`` vocabulary-sized vectors and given to the loss, so this is :class:`SentenceTransformerTask` with the
family's differences:

- the default loss, ``SpladeLoss(SparseMultipleNegativesRankingLoss, document 3e-5, query 5e-5)``;
- the loss checks: only losses that keep the embeddings sparse train alone (:func:`validate_sparse_loss`);
- SpladeLoss's regulariser warm-up, a pure function of the optimizer step evaluated inside the compiled step
  (``uses_step``; its schedule from a :class:`SpladeRegularizerWeightSchedulerCallback` passed for that loss, the
  reference's defaults otherwise), where the reference mutates the loss at each step begin;
- :meth:`regularizer_weights_to_log`, the weights the reference's callback adds to each training log.
"""

from __future__ import annotations

import logging

from stcore_jax.sentence_transformer.model_card import ModelCardCallback
from stcore_jax.sentence_transformer.task import SentenceTransformerTask, apply_loss
from stcore_jax.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
from stcore_jax.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss, validate_sparse_loss

logger = logging.getLogger(__name__)

_DEFAULT_SCHEDULE = {"warmup_ratio": 1 / 3, "scheduler_type": "quadratic"}


class SparseEncoderTask(SentenceTransformerTask):
    """Training a :class:`~stcore_jax.SparseEncoder` on text columns. ``schedulers``: the user's
    SpladeRegularizerWeightSchedulerCallbacks (each names its loss)."""

    def __init__(self, model, args, schedulers=()):
        super().__init__(model, args)
        self.schedulers = list(schedulers)

    # -- losses --------------------------------------------------------------------------------
    def default_loss(self):
        logger.info("No `loss` passed, using `SpladeLoss` with `SparseMultipleNegativesRankingLoss` as the default. "
                    "Note: `query_regularizer_weight` and `document_regularizer_weight` are sensitive parameters and "
                    "should be tuned for your task.")
        return SpladeLoss(self.model, SparseMultipleNegativesRankingLoss(self.model), query_regularizer_weight=5e-5,
                          document_regularizer_weight=3e-5)

    def check_losses(self, losses: dict) -> None:
        for name, loss in losses.items():
            try:
                validate_sparse_loss(loss)
            except ValueError as e:
                raise ValueError(f"The loss for dataset {name!r}: {e}") from None
            if getattr(loss, "needs_outputs", False):
                raise NotImplementedError(
                    f"The loss for dataset {name!r} ({type(loss).__name__}) trains a CSR model from its "
                    f"SparseAutoEncoder outputs, which the stcore_jax SparseEncoderTrainer does not route yet; train a "
                    f"SPLADE model with SpladeLoss")
        for cb in self.schedulers:
            if not any(cb.loss is lo for lo in losses.values()):
                raise ValueError("A SpladeRegularizerWeightSchedulerCallback was given for a loss the trainer does not "
                                 "train; pass it the same SpladeLoss object as loss=")
        if any(isinstance(lo, SpladeLoss) and self._scheduler(lo) is None for lo in losses.values()):
            logger.warning("SpladeLoss detected without SpladeRegularizerWeightSchedulerCallback. Adding default "
                           "SpladeRegularizerWeightSchedulerCallback to gradually increase weight values from 0 to "
                           "their maximum.")
        super().check_losses(losses)

    def _scheduler(self, loss) -> SpladeRegularizerWeightSchedulerCallback | None:
        return next((cb for cb in self.schedulers if cb.loss is loss), None)

    def warmup_schedule(self, loss) -> dict | None:
        """The warm-up of ``loss``'s regulariser weights (``SpladeLoss.at_step`` keywords), None for a loss with
        no regulariser weights."""
        if not isinstance(loss, SpladeLoss):
            return None
        cb = self._scheduler(loss)
        return cb.schedule() if cb is not None else dict(_DEFAULT_SCHEDULE)

    def objective(self, loss, *, loss_key, num_shards, model=None):
        schedule = self.warmup_schedule(loss)
        if schedule is None or self.total_steps is None:  # not training: the constructor's weights
            return super().objective(loss, loss_key=loss_key, num_shards=num_shards, model=model)
        forward = (model if model is not None else self.compute_model()).forward
        total = self.total_steps

        def objective(trainable, batch, key, step):
            view = loss.at_step(step, total, **schedule)  # the step's weights, traced: no retrace per step
            return apply_loss(view, forward, trainable, batch, key, loss_key=loss_key, num_shards=num_shards)

        objective.uses_step = True
        return objective

    def regularizer_weights_to_log(self, losses: dict, global_step: int) -> dict:
        """The regulariser weights the last optimizer step (``global_step - 1``) trained with, as the reference's
        callback logs them: ``document_regularizer_weight`` and (when there is a query regulariser)
        ``query_regularizer_weight``; prefixed ``{dataset}_`` when several datasets train distinct SpladeLosses."""
        splade = {}
        for name, lo in losses.items():
            if isinstance(lo, SpladeLoss) and all(lo is not seen for seen in splade.values()):
                splade[name] = lo
        out = {}
        for name, lo in splade.items():
            if self.total_steps is None:
                weights = lo.regularizer_weights()
            else:
                weights = lo.regularizer_weights(max(global_step - 1, 0), self.total_steps, **self.warmup_schedule(lo))
            prefix = f"{name}_" if len(splade) > 1 else ""
            out.update({prefix + k: float(v) for k, v in weights.items() if v is not None})
        return out

    def frozen_keys(self) -> frozenset:
        """LoRA's frozen base weights, and modules built with ``frozen=True`` (a SparseStaticEmbedding inside a
        Router): no optimizer state, no update, no weight decay, as the reference's ``requires_grad=False``."""
        return super().frozen_keys() | frozenset(self.model.frozen_param_paths())

    def callbacks(self, trainer) -> list:
        return [ModelCardCallback(trainer)]  # fills model.model_card_data (datasets, losses, arguments, logs)
