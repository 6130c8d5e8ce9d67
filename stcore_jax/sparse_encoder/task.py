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
- :meth:`regularizer_weights_to_log`, the weights the reference's callback adds to each training log;
- CSR models (a dense encoder + :class:`~stcore_jax.models.sparse_autoencoder.SparseAutoEncoder`) trained with
  CSRLoss (``needs_outputs``): the reference's ``CSRLoss.forward`` runs ``model(features)`` once per column, in
  column order, and each training forward updates the autoencoder's dead-latent buffer ``stats_last_nonzero`` (after
  its top-k and again after its top-4k; the auxiliary latents of a column read the counts as that column's top-k
  left them). So the columns are NOT merged into one forward here: :func:`csr_column_outputs` runs them one by one
  with the state threaded through (the model state of training/step.py, ``{"<SAE index>": int32 [H]}``), the trainer's
  padding rows masked out of the update, and the per-row dropout keys of ``row_keys``. Evaluation (no dropout key)
  reads the state without advancing it, as the reference's ``eval()``/``no_grad`` forward. One top-level
  SparseAutoEncoder per model (the features carry one state); sequence packing and GradCache base losses are refused.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from stcore_jax.base.loss import InputKind
from stcore_jax.models.router import Router
from stcore_jax.models.sparse_autoencoder import ROW_MASK_KEY, STATE_KEY, UPDATE_KEY, SparseAutoEncoder
from stcore_jax.sentence_transformer.losses.columns import batch_size, row_keys
from stcore_jax.sentence_transformer.losses.embed import loss_context
from stcore_jax.sentence_transformer.model_card import ModelCardCallback
from stcore_jax.sentence_transformer.task import SentenceTransformerTask, _loss_params, _total, apply_loss
from stcore_jax.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
from stcore_jax.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss, validate_sparse_loss

logger = logging.getLogger(__name__)

_DEFAULT_SCHEDULE = {"warmup_ratio": 1 / 3, "scheduler_type": "quadratic"}


def csr_column_outputs(forward, params, columns, state, *, dropout_key, mask, update: bool):
    """Each column's training forward, in column order, the autoencoder's state threaded from one to the next (the
    reference's ``[model(f) for f in sentence_features]``).

    Args:
      forward: the model's ``forward(params, features, dropout_key=...)``.
      params: the model's parameters.
      columns: one feature dict per column (``input_ids`` ``[B, T]``, ...).
      state: the dead-latent counts, int32 ``[H]``.
      dropout_key: the step's key (per-row keys ``row_keys(dropout_key, c, arange(B))``), or None.
      mask: ``[B]`` bool, the batch's real rows (padding rows fire no latent), or None.
      update: whether the forwards advance the state (False: evaluation).

    Returns:
      ``(outputs, state)``: per column the forward's features (the autoencoder's training outputs), and the state
      after the last column.
    """
    outputs = []
    for c, feats in enumerate(columns):
        keys = row_keys(dropout_key, c, jnp.arange(batch_size(feats)))
        out = forward(params, {**feats, STATE_KEY: state, ROW_MASK_KEY: mask, UPDATE_KEY: update}, dropout_key=keys)
        state = out[STATE_KEY]
        outputs.append(out)
    return outputs, state


class SparseEncoderTask(SentenceTransformerTask):
    """Training a :class:`~stcore_jax.SparseEncoder` on text columns. ``schedulers``: the user's
    SpladeRegularizerWeightSchedulerCallbacks (each names its loss)."""

    def __init__(self, model, args, schedulers=()):
        super().__init__(model, args)
        self.schedulers = list(schedulers)
        self.trains_csr = False  # a loss needs the autoencoder's outputs (set by check_losses)

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
                self._check_csr(name, loss)
                self.trains_csr = True
        for cb in self.schedulers:
            if not any(cb.loss is lo for lo in losses.values()):
                raise ValueError("A SpladeRegularizerWeightSchedulerCallback was given for a loss the trainer does not "
                                 "train; pass it the same SpladeLoss object as loss=")
        if any(isinstance(lo, SpladeLoss) and self._scheduler(lo) is None for lo in losses.values()):
            logger.warning("SpladeLoss detected without SpladeRegularizerWeightSchedulerCallback. Adding default "
                           "SpladeRegularizerWeightSchedulerCallback to gradually increase weight values from 0 to "
                           "their maximum.")
        super().check_losses(losses)

    def _sae_index(self) -> str | None:
        """The model's top-level SparseAutoEncoder's index (the key of its parameters and of its model state)."""
        found = [str(i) for i, m in enumerate(self.model.modules) if isinstance(m, SparseAutoEncoder)]
        return found[0] if len(found) == 1 else None

    def _check_csr(self, name, loss) -> None:
        """What a CSRLoss run needs: one top-level SparseAutoEncoder, its columns embedded one forward each (no
        sequence packing, no GradCache base loss, last-layer embeddings)."""
        what = f"The loss for dataset {name!r} ({type(loss).__name__})"
        nested = [m for m in self.model.modules if isinstance(m, Router)
                  and any(isinstance(sub, SparseAutoEncoder) for sub in m.modules.values())]
        count = sum(isinstance(m, SparseAutoEncoder) for m in self.model.modules)
        if nested or count != 1:
            where = "inside a Router" if nested else f"{count} at the top level"
            raise ValueError(f"{what} trains a CSR model: it needs exactly one SparseAutoEncoder in the model's "
                             f"module list (a dense encoder, Pooling, SparseAutoEncoder), found {where}")
        spec = loss.inputs
        if spec.mini_batch_size is not None or spec.guide is not None or spec.kind is not InputKind.EMBEDDINGS:
            raise ValueError(f"{what} runs every column's forward itself (the autoencoder's dead-latent counts advance "
                             f"column by column) and passes the sparse embeddings to {type(loss.loss).__name__}, "
                             "which needs GradCache mini-batches, a guide model or per-layer embeddings; wrap a plain "
                             "embedding loss such as SparseMultipleNegativesRankingLoss")
        if self.args.sequence_packing is True:
            raise ValueError(f"sequence_packing=True, but {what} runs each column's forward separately (the "
                             "autoencoder's dead-latent counts advance column by column) and cannot take a "
                             "sequence-packed batch. Train with sequence_packing=None or False.")

    def packing_obstacles(self, losses: dict) -> list[str]:
        reasons = super().packing_obstacles(losses)
        return reasons + [f"loss {type(lo).__name__} of dataset {n!r} runs each column's forward separately (CSR)"
                          for n, lo in losses.items() if getattr(lo, "needs_outputs", False)]

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
        if getattr(loss, "needs_outputs", False):
            return self._csr_objective(loss, loss_key=loss_key, num_shards=num_shards, model=model)
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

    def _csr_objective(self, loss, *, loss_key, num_shards, model=None):
        """CSRLoss's objective (``uses_model_state``): the columns through :func:`csr_column_outputs`, then
        ``loss.compute_loss_from_outputs``; its components are logged as SpladeLoss's are. The state advances when
        there is a dropout key (training), and is only read without one (evaluation)."""
        forward = (model if model is not None else self.compute_model()).forward
        index = self._sae_index()
        if index is None:
            raise ValueError(f"{type(loss).__name__} needs a model with one top-level SparseAutoEncoder")
        sae = self.model.modules[int(index)]

        def objective(trainable, batch, key, model_state):
            state = model_state.get(index)
            if state is None:  # a loss evaluated outside training: the module's own counts
                state = sae.initial_state()
            outputs, state = csr_column_outputs(forward, trainable["model"], batch["columns"], state,
                                                dropout_key=key, mask=batch["mask"], update=key is not None)
            ctx = loss_context(loss, mask=batch["mask"], num_shards=num_shards,
                               loss_params=_loss_params(trainable, loss_key), dropout_key=key)
            total, comps = _total(loss.compute_loss_from_outputs(outputs, batch.get("label"), **ctx))
            return total, (comps, {**model_state, index: state})

        objective.uses_model_state = True
        return objective

    def initial_model_state(self) -> dict:
        """``{"<index>": int32 [H]}``, the SparseAutoEncoder's dead-latent counts as the module holds them, when a
        loss trains them (CSRLoss); ``{}`` otherwise (a SPLADE run's train state is unchanged)."""
        index = self._sae_index()
        if not self.trains_csr or index is None:
            return {}
        return {index: self.model.modules[int(index)].initial_state()}

    def set_model_state(self, model_state: dict) -> None:
        for index, stats in model_state.items():
            self.model.modules[int(index)].stats_last_nonzero = np.asarray(stats, np.int32)

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
