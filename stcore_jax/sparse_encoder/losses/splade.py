"""SpladeLoss and CachedSpladeLoss: a ranking/distillation loss on sparse embeddings plus FLOPS regularisers.

SPLADE (Formal et al. 2021-2022) trains ``[B, V]`` vocabulary-sized embeddings with any embedding loss (the
"base loss") and keeps them sparse with FLOPS regularisers (:mod:`.flops`) on the query column (column 0) and
the document columns (columns 1..), each with its own weight. As in sentence-transformers 6.2 the result is a
dict of components, which the trainer sums and logs one by one:

* ``base_loss`` (or the base loss's own keys when it returns a dict);
* ``document_regularizer_loss = lambda_d * FLOPS(columns 1..)``, or over every column with
  ``use_document_regularizer_only=True`` (symmetric data, all texts are documents; then there is no query term);
* ``query_regularizer_loss = lambda_q * FLOPS(column 0)``, only when ``query_regularizer_weight`` is not None
  (inference-free models, whose queries are not encoded by the network, set none).

Weights and the warm-up. The constructor's weights are the maxima. The reference trainer warms them up from 0
over the first third of training (:mod:`.warmup`); here the weights of a step are explicit instead of mutated
state: pass ``document_regularizer_weight=`` / ``query_regularizer_weight=`` (traced scalars are fine) to
:meth:`SpladeLoss.compute_loss_from_embeddings`, or take the view :meth:`SpladeLoss.at_step` (a copy holding the
step's weights) and hand it to the dispatcher
(:func:`stcore_jax.sentence_transformer.losses.embed.compute_loss`), which calls ``compute_loss_from_embeddings``.

Distribution. ``mask`` and ``num_shards`` from the context reach the base loss and the regularisers. The FLOPS
scope (``flops_scope=``, :mod:`.flops`): ``"global"`` (default) regularises the mean over the whole batch across
devices; ``"per_device"`` reproduces PyTorch DDP (the mean over ``num_shards`` data shards of each shard's
FLOPS). On one device, or with ``num_shards=1``, the two are equal and equal the reference.
"""

from __future__ import annotations

import copy
import logging

from stcore_jax.base.loss import Loss, WrapperLoss
from stcore_jax.sentence_transformer.losses.cached import GradCacheMixin
from stcore_jax.sparse_encoder.losses.flops import FlopsLoss, check_scope
from stcore_jax.sparse_encoder.losses.warmup import regularizer_weight

logger = logging.getLogger(__name__)

# Context keywords the regularisers take (the rest is the base loss's business).
_REGULARIZER_CONTEXT = ("mask", "num_shards")


def _weight(value, name: str):
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"SpladeLoss: {name} must be a number, got {value!r}.") from None


class SpladeLoss(WrapperLoss):
    """SpladeLoss (sentence-transformers 6.2 constructor order). Takes the wrapped loss's columns and labels.

    Args:
      model: the SparseEncoder (stored, never called).
      loss: the base loss, e.g. ``SparseMultipleNegativesRankingLoss(model)`` or ``SparseMarginMSELoss(model)``
        (any embedding loss; not FlopsLoss or the CSR losses).
      document_regularizer_weight: lambda_d, required (a ``ValueError`` without it); 3e-5 is the trainer's default.
      query_regularizer_weight: lambda_q, or None for no query regulariser (inference-free SPLADE, or
        ``use_document_regularizer_only``).
      document_regularizer, query_regularizer: losses to use instead of ``FlopsLoss`` (called as
        ``reg.compute_loss_from_embeddings(columns, None, mask=..., num_shards=...)`` on a list of ``[B, V]``).
      document_regularizer_threshold, query_regularizer_threshold: the default FlopsLoss's ``threshold``.
      use_document_regularizer_only: every column is a document (symmetric data); no query regulariser.
      flops_scope: keyword-only, ``"global"`` (default) or ``"per_device"``, for the default FlopsLoss
        regularisers (see :mod:`stcore_jax.sparse_encoder.losses.flops`).
    """

    sparse_wrapper = True  # may wrap the Sparse* ranking losses (standalone.py)
    can_be_base_loss = False  # not inside another SpladeLoss or a CSRLoss

    def __init__(self, model, loss: Loss, document_regularizer_weight: float | None = None,
                 query_regularizer_weight: float | None = None, document_regularizer: Loss | None = None,
                 query_regularizer: Loss | None = None, document_regularizer_threshold: int | None = None,
                 query_regularizer_threshold: int | None = None, use_document_regularizer_only: bool = False, *,
                 flops_scope: str = "global") -> None:
        if document_regularizer_weight is None:
            raise ValueError(
                f"{type(self).__name__} needs document_regularizer_weight, the weight of the FLOPS regulariser on the "
                "document embeddings (lambda_d; the reference has no default). Pass e.g. "
                "document_regularizer_weight=3e-5 (and query_regularizer_weight=5e-5 for the query embeddings), as "
                "the SparseEncoderTrainer's default loss does.")
        super().__init__(model, loss)
        if not getattr(loss, "can_be_base_loss", True):
            raise ValueError(f"{type(self).__name__} cannot wrap {loss.name}: the base loss must be an embedding loss "
                             "such as SparseMultipleNegativesRankingLoss, SparseMarginMSELoss or "
                             "SparseDistillKLDivLoss (not FlopsLoss, a CSR loss or another SpladeLoss).")
        self.document_regularizer_weight = _weight(document_regularizer_weight, "document_regularizer_weight")
        self.query_regularizer_weight = _weight(query_regularizer_weight, "query_regularizer_weight")
        self.use_document_regularizer_only = bool(use_document_regularizer_only)
        self.flops_scope = check_scope(flops_scope)
        self.document_regularizer = (document_regularizer if document_regularizer is not None
                                     else FlopsLoss(model, threshold=document_regularizer_threshold, scope=flops_scope))
        self.query_regularizer = None
        if query_regularizer is not None:
            self.query_regularizer = query_regularizer
        elif not self.use_document_regularizer_only:
            self.query_regularizer = FlopsLoss(model, threshold=query_regularizer_threshold, scope=flops_scope)

        if self.query_regularizer_weight is None and not self.use_document_regularizer_only:
            logger.warning("query_regularizer_weight is None. This means that the query regularization will not be "
                           "applied. If you are in an inference free set up it's fine else you should have a "
                           "query_regularizer_weight > 0.")
        if self.use_document_regularizer_only and self.query_regularizer_weight is not None:
            logger.warning("query_regularizer_weight should be None when use_document_regularizer_only is True: every "
                           "input is regularized as a document. query_regularizer_weight will be ignored.")
            self.query_regularizer_weight = None

    # --- contract -----------------------------------------------------------------------------------------------
    def validate_columns(self, num_inputs: int, has_label: bool) -> None:
        super().validate_columns(num_inputs, has_label)
        if num_inputs < 2 and not self.use_document_regularizer_only:
            raise ValueError(f"{self.name} regularizes column 0 as queries and columns 1.. as documents, so it needs "
                             f"at least 2 input columns, but the dataset has {num_inputs}. With one kind of text, "
                             "pass use_document_regularizer_only=True.")

    # --- weights ------------------------------------------------------------------------------------------------
    def regularizer_weights(self, step=None, total_steps: int | None = None, *, warmup_ratio: float = 1 / 3,
                            scheduler_type: str = "quadratic") -> dict:
        """``{"document_regularizer_weight": ..., "query_regularizer_weight": ...}`` at optimizer step ``step`` (0 on
        the first step; may be traced) of a run of ``total_steps`` with the trainer's warm-up (:mod:`.warmup`); the
        maxima when ``step`` is None. A query weight of None (no query regulariser) stays None. What the trainer
        logs as ``document_regularizer_weight`` / ``query_regularizer_weight``."""
        if step is None:
            return {"document_regularizer_weight": self.document_regularizer_weight,
                    "query_regularizer_weight": self.query_regularizer_weight}
        if total_steps is None:
            raise ValueError("regularizer_weights(step=...) needs total_steps, the run's number of optimizer steps.")
        kw = dict(warmup_ratio=warmup_ratio, scheduler_type=scheduler_type)
        return {"document_regularizer_weight": regularizer_weight(step, total_steps, self.document_regularizer_weight,
                                                                  **kw),
                "query_regularizer_weight": regularizer_weight(step, total_steps, self.query_regularizer_weight, **kw)}

    def with_weights(self, document_regularizer_weight=None, query_regularizer_weight=None):
        """A shallow copy whose regulariser weights are these (None: keep this loss's), e.g. traced scalars inside a
        jitted step; the configuration (and ``get_config_dict``) of ``self`` is unchanged."""
        view = copy.copy(self)
        if document_regularizer_weight is not None:
            view.document_regularizer_weight = document_regularizer_weight
        if query_regularizer_weight is not None and self.query_regularizer_weight is not None:
            view.query_regularizer_weight = query_regularizer_weight
        return view

    def at_step(self, step, total_steps: int, *, warmup_ratio: float = 1 / 3, scheduler_type: str = "quadratic"):
        """This loss with the warmed-up weights of optimizer step ``step`` (see :meth:`regularizer_weights`)."""
        return self.with_weights(**self.regularizer_weights(step, total_steps, warmup_ratio=warmup_ratio,
                                                            scheduler_type=scheduler_type))

    # --- computation --------------------------------------------------------------------------------------------
    def compute_loss_from_embeddings(self, embeddings, labels=None, *, document_regularizer_weight=None,
                                     query_regularizer_weight=None, **context):
        """Components (a dict of float32 scalars; the total is their sum) from per-column ``[B, V]`` embeddings.

        ``document_regularizer_weight`` / ``query_regularizer_weight``: this call's weights (e.g. the warm-up's at
        the current step); default: the loss's. ``context``: ``mask``, ``num_shards`` and whatever the base loss
        takes (``key``, ``params``, ...)."""
        embeddings = list(embeddings)
        if len(embeddings) < 2 and not self.use_document_regularizer_only:
            raise ValueError(f"{self.name} needs at least 2 embedding columns (query, document...), got "
                             f"{len(embeddings)}; or use_document_regularizer_only=True.")
        w_doc = self.document_regularizer_weight if document_regularizer_weight is None else document_regularizer_weight
        w_query = self.query_regularizer_weight
        if w_query is not None and query_regularizer_weight is not None:
            w_query = query_regularizer_weight

        base = self.loss.compute_loss_from_embeddings(embeddings, labels, **context)
        losses = dict(base) if isinstance(base, dict) else {"base_loss": base}
        reg_context = {k: context[k] for k in _REGULARIZER_CONTEXT if k in context}
        documents = embeddings if self.use_document_regularizer_only else embeddings[1:]
        losses["document_regularizer_loss"] = (
            self.document_regularizer.compute_loss_from_embeddings(documents, None, **reg_context) * w_doc)
        if w_query is not None:
            losses["query_regularizer_loss"] = (
                self.query_regularizer.compute_loss_from_embeddings(embeddings[:1], None, **reg_context) * w_query)
        return losses

    def get_config_dict(self):
        """As the reference: the base loss, the weights, non-FLOPS regularisers by name, thresholds that are set."""
        config = {"loss": self.loss, "document_regularizer_weight": self.document_regularizer_weight}
        if self.query_regularizer_weight is not None:
            config["query_regularizer_weight"] = self.query_regularizer_weight
        if not isinstance(self.document_regularizer, FlopsLoss):
            config["document_regularizer"] = type(self.document_regularizer).__name__
        if getattr(self.document_regularizer, "threshold", None) is not None:
            config["document_regularizer_threshold"] = self.document_regularizer.threshold
        if self.query_regularizer is not None:
            if not isinstance(self.query_regularizer, FlopsLoss):
                config["query_regularizer"] = type(self.query_regularizer).__name__
            if getattr(self.query_regularizer, "threshold", None) is not None:
                config["query_regularizer_threshold"] = self.query_regularizer.threshold
        return config


class CachedSpladeLoss(GradCacheMixin, SpladeLoss):
    """SpladeLoss with GradCache (sentence-transformers 6.3+ ``CachedSpladeLoss``): the columns are embedded in
    chunks of ``mini_batch_size`` rows (declared in ``inputs.mini_batch_size``; the dispatcher
    :func:`stcore_jax.sentence_transformer.losses.embed.compute_loss` does the chunking and the replay), then the
    base loss and the regularisers run on the whole ``[B, V]`` matrices. The value, the components and the
    gradients equal SpladeLoss's on the same batch; a step's encoder activation memory is one chunk's (the
    ``[B, V]`` embeddings and their gradient stay whole). ``mini_batch_num_tokens`` is accepted and ignored with
    a warning (chunks need static shapes); ``show_progress_bar`` is ignored (the chunks run inside one compiled
    step)."""

    def __init__(self, model, loss: Loss, document_regularizer_weight: float | None = None,
                 query_regularizer_weight: float | None = None, document_regularizer: Loss | None = None,
                 query_regularizer: Loss | None = None, document_regularizer_threshold: int | None = None,
                 query_regularizer_threshold: int | None = None, use_document_regularizer_only: bool = False,
                 mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False,
                 *, flops_scope: str = "global") -> None:
        SpladeLoss.__init__(
            self, model, loss, document_regularizer_weight=document_regularizer_weight,
            query_regularizer_weight=query_regularizer_weight, document_regularizer=document_regularizer,
            query_regularizer=query_regularizer, document_regularizer_threshold=document_regularizer_threshold,
            query_regularizer_threshold=query_regularizer_threshold,
            use_document_regularizer_only=use_document_regularizer_only, flops_scope=flops_scope)
        self._init_cache(mini_batch_size, mini_batch_num_tokens, show_progress_bar)

    @property
    def num_shards(self) -> int:
        """The data-parallel degree the chunks are laid out for when the caller gives none: the base loss's."""
        return self.loss.inputs.num_shards

    def get_config_dict(self):
        return {**SpladeLoss.get_config_dict(self), "mini_batch_size": self.mini_batch_size,
                "mini_batch_num_tokens": self.mini_batch_num_tokens}
