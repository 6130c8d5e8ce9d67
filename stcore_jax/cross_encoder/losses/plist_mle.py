"""PListMLELoss (position-aware ListMLE, Lan et al. 2014) and ListMLELoss (no position weights).

Layout ``"listwise"`` (scores, labels, doc_mask ``[B, max_docs]``). The reference pads these logits with 1e-16
(not -1e16) and masks them out of the normalisers; so does this.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import f32, masked_mean, sharding_agnostic
from stcore_jax.cross_encoder.losses._common import IDENTITY, ListwiseLoss, apply_activation, listwise_masks

Array = jax.Array
PAD_LOGIT = 1e-16
EPS = 1e-10


class PListMLELambdaWeight:
    """Position weights ``w(mask [B, N] bool) -> [B, N]``: 2^(n_q - r) - 1 for rank r of a query with n_q
    documents (exponent shifted by n_q - 127 when n_q > 127, to stay finite), 0 in the padding.
    ``rank_discount_fn``: a custom ``mask -> weights`` function instead."""

    config_name = "sentence_transformers.cross_encoder.losses.plist_mle.PListMLELambdaWeight"

    def __init__(self, rank_discount_fn: Callable | None = None) -> None:
        self.rank_discount_fn = rank_discount_fn

    def __call__(self, mask: Array) -> Array:
        if self.rank_discount_fn is not None:
            return self.rank_discount_fn(mask)
        n = jnp.sum(mask, axis=1, keepdims=True).astype(jnp.float32)
        ranks = jnp.arange(1, mask.shape[1] + 1, dtype=jnp.float32)[None, :]
        scale = jnp.maximum(n - 127.0, 0.0)
        return (2.0 ** (n - ranks - scale) - 2.0 ** (-scale)) * mask


@sharding_agnostic
def p_list_mle(scores, labels, *, doc_mask=None, mask=None, lambda_weight: PListMLELambdaWeight | None = None,
               respect_input_order: bool = True, activation_fn=None) -> Array:
    """mean_q -sum_r w_r (s_r - logsumexp_{j >= r, real} s_j), with w normalised per query (None: w = 1).

    Args:
      scores, labels: ``[B, N]``; doc_mask ``[B, N] bool`` real documents (a prefix per row); mask ``[B] bool``.
      respect_input_order: the documents are already ordered by relevance (True), or sort them by label
        (descending; ties keep their input order) first.
    """
    z = apply_activation(activation_fn, f32(scores))
    m = listwise_masks(z, doc_mask, mask)
    logits = jnp.where(m, z, PAD_LOGIT)
    if respect_input_order:
        sorted_logits, sorted_mask = logits, m
    else:
        order = jnp.argsort(-jnp.where(m, f32(labels), -jnp.inf), axis=1, stable=True)
        sorted_logits = jnp.take_along_axis(logits, order, axis=1)
        sorted_mask = jnp.take_along_axis(m, order, axis=1)
    masked = jnp.where(sorted_mask, sorted_logits, jnp.finfo(jnp.float32).min)
    log_probs = sorted_logits - jax.lax.cumlogsumexp(masked, axis=1, reverse=True)
    if lambda_weight is not None:
        w = lambda_weight(m)  # the reference weighs with the unsorted mask (the same prefix)
        log_probs = log_probs * (w / (jnp.sum(w, axis=1, keepdims=True) + EPS))
    per_query = -jnp.sum(jnp.where(sorted_mask, log_probs, 0.0), axis=1)
    return masked_mean(per_query, jnp.any(m, axis=1))


class PListMLELoss(ListwiseLoss):
    """Reference: ``PListMLELoss(model, lambda_weight=PListMLELambdaWeight(), activation_fn=Identity(),
    mini_batch_size=None, respect_input_order=True)``."""

    def __init__(self, model=None, lambda_weight: PListMLELambdaWeight | None = "default", activation_fn=IDENTITY,
                 mini_batch_size: int | None = None, respect_input_order: bool = True) -> None:
        super().__init__(model, activation_fn, mini_batch_size)
        if isinstance(lambda_weight, str) and lambda_weight == "default":
            lambda_weight = PListMLELambdaWeight()
        self.lambda_weight = lambda_weight
        self.respect_input_order = respect_input_order

    def compute_loss_from_scores(self, scores, labels=None, **context):
        return p_list_mle(scores, labels, **self._masks(context), lambda_weight=self.lambda_weight,
                          respect_input_order=self.respect_input_order, activation_fn=self.activation_fn)

    def get_config_dict(self):
        lw = self.lambda_weight
        return {"lambda_weight": None if lw is None else getattr(lw, "config_name", type(lw).__name__),
                "activation_fn": self._activation_name, "mini_batch_size": self.mini_batch_size,
                "respect_input_order": self.respect_input_order}


def list_mle(scores, labels, *, doc_mask=None, mask=None, respect_input_order: bool = True,
             activation_fn=None) -> Array:
    """:func:`p_list_mle` without position weights."""
    return p_list_mle(scores, labels, doc_mask=doc_mask, mask=mask, lambda_weight=None,
                      respect_input_order=respect_input_order, activation_fn=activation_fn)


class ListMLELoss(PListMLELoss):
    """Reference: ``ListMLELoss(model, activation_fn=Identity(), mini_batch_size=None, respect_input_order=True)``."""

    def __init__(self, model=None, activation_fn=IDENTITY, mini_batch_size: int | None = None,
                 respect_input_order: bool = True) -> None:
        super().__init__(model, None, activation_fn, mini_batch_size, respect_input_order)

    def get_config_dict(self):
        config = super().get_config_dict()
        del config["lambda_weight"]
        return config
