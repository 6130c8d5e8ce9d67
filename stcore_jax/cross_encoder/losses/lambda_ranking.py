"""LambdaLoss (Wang et al. 2018) with its five weighting schemes, and RankNetLoss (no weighting).

Layout ``"listwise"``: scores, labels and doc_mask ``[B, max_docs]`` (ragged lists right-padded). Padding is
filled exactly as the reference pads (logits -1e16, labels -inf), so masked results equal its ragged ones, and a
wider static ``max_docs`` than the batch's longest list gives the same value.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import f32, sharding_agnostic
from stcore_jax.cross_encoder.losses._common import IDENTITY, ListwiseLoss, apply_activation, listwise_masks

Array = jax.Array
PAD_LOGIT = -1e16  # the reference's padding logit (ListNet, LambdaLoss, ADRMSE)
_REF = "sentence_transformers.cross_encoder.losses.lambda_loss."


class BaseWeightingScheme:
    """``weights(gain [B, N], discount [1, N], true_sorted [B, N]) -> [B, N, N]`` (or a scalar): pair weights
    in prediction order. ``config_name`` is the reference's class path (for ``get_config_dict``)."""

    @property
    def config_name(self) -> str:
        return _REF + type(self).__name__

    def __call__(self, gain: Array, discount: Array, true_sorted: Array) -> Array:
        raise NotImplementedError


class NoWeightingScheme(BaseWeightingScheme):
    """w_ij = 1 (RankNet)."""

    def __call__(self, gain, discount, true_sorted):
        return jnp.float32(1.0)


class NDCGLoss1Scheme(BaseWeightingScheme):
    """w_ij = G_i / D_i."""

    def __call__(self, gain, discount, true_sorted):
        return (gain / discount)[:, :, None]


class NDCGLoss2Scheme(BaseWeightingScheme):
    """w_ij = |1/D_{|i-j|} - 1/D_{|i-j|+1}| * |G_i - G_j|, zero on the diagonal."""

    def __call__(self, gain, discount, true_sorted):
        n = gain.shape[1]
        pos = jnp.arange(1, n + 1)
        delta = jnp.abs(pos[:, None] - pos[None, :])
        d = discount[0]
        # delta - 1 is -1 on the diagonal (wraps, as in torch); the diagonal is zeroed below.
        deltas = jnp.abs(1.0 / jnp.abs(d[delta - 1]) - 1.0 / jnp.abs(d[delta])) * (1.0 - jnp.eye(n))
        return deltas[None, :, :] * jnp.abs(gain[:, :, None] - gain[:, None, :])


class LambdaRankScheme(BaseWeightingScheme):
    """w_ij = |1/D_i - 1/D_j| * |G_i - G_j|."""

    def __call__(self, gain, discount, true_sorted):
        return (jnp.abs(1.0 / discount[:, :, None] - 1.0 / discount[:, None, :])
                * jnp.abs(gain[:, :, None] - gain[:, None, :]))


class NDCGLoss2PPScheme(BaseWeightingScheme):
    """w_ij = mu * NDCGLoss2 + LambdaRank."""

    def __init__(self, mu: float = 10.0) -> None:
        self.mu = mu

    def __call__(self, gain, discount, true_sorted):
        return (self.mu * NDCGLoss2Scheme()(gain, discount, true_sorted)
                + LambdaRankScheme()(gain, discount, true_sorted))


@sharding_agnostic
def lambda_loss(scores, labels, *, doc_mask=None, mask=None, weighting_scheme: BaseWeightingScheme | None = None,
                k: int | None = None, sigma: float = 1.0, eps: float = 1e-10, reduction_log: str = "binary",
                activation_fn=None) -> Array:
    """-sum over valid pairs of w_ij log s(sigma (s_i - s_j)) / #valid pairs, in prediction order.

    Args:
      scores: ``[B, N]`` logits. labels: ``[B, N]`` relevance (ties allowed). doc_mask: ``[B, N] bool`` real
        documents (a prefix per row); mask: ``[B] bool`` real rows.
      weighting_scheme: a :class:`BaseWeightingScheme` (None: :class:`NoWeightingScheme`). k: pairs with
        either rank below k count (None: all). reduction_log: ``"binary"`` divides by ln 2, ``"natural"`` not.
    """
    scheme = weighting_scheme or NoWeightingScheme()
    z = apply_activation(activation_fn, f32(scores))
    m = listwise_masks(z, doc_mask, mask)
    n = z.shape[1]
    logits = jnp.where(m, z, PAD_LOGIT)
    y = jnp.where(m, f32(labels), -jnp.inf)

    order = jnp.argsort(-logits, axis=-1, stable=True)  # prediction order, descending
    logits_sorted = jnp.take_along_axis(logits, order, axis=-1)
    labels_sorted = -jnp.sort(-y, axis=-1)
    true_sorted = jnp.take_along_axis(y, order, axis=-1)

    true_diffs = true_sorted[:, :, None] - true_sorted[:, None, :]
    pair_mask = jnp.isfinite(true_diffs)  # both documents real
    if not isinstance(scheme, NDCGLoss1Scheme):
        pair_mask = pair_mask & (true_diffs > 0)
    kk = k or n
    top = jnp.arange(n) < kk
    pair_mask = pair_mask & (top[:, None] | top[None, :])

    true_sorted = jnp.maximum(true_sorted, 0.0)
    labels_sorted = jnp.maximum(labels_sorted, 0.0)
    discount = jnp.log2(1.0 + jnp.arange(1, n + 1, dtype=jnp.float32))[None, :]
    max_dcg = jnp.maximum(jnp.sum(((2.0 ** labels_sorted - 1.0) / discount)[:, :kk], axis=-1), eps)
    gain = (2.0 ** true_sorted - 1.0) / max_dcg[:, None]
    weights = scheme(gain, discount, true_sorted)

    diffs = jnp.clip(logits_sorted[:, :, None] - logits_sorted[:, None, :], -1e8, 1e8)
    losses = weights * jax.nn.log_sigmoid(sigma * diffs)
    if reduction_log == "binary":
        losses = losses / math.log(2)
    count = jnp.sum(pair_mask)
    return -jnp.sum(jnp.where(pair_mask, losses, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)


class LambdaLoss(ListwiseLoss):
    """Reference: ``LambdaLoss(model, weighting_scheme=NDCGLoss2PPScheme(), k=None, sigma=1.0, eps=1e-10,
    reduction_log="binary", activation_fn=Identity(), mini_batch_size=None)``."""

    def __init__(self, model=None, weighting_scheme: BaseWeightingScheme | None = "default", k: int | None = None,
                 sigma: float = 1.0, eps: float = 1e-10, reduction_log: str = "binary", activation_fn=IDENTITY,
                 mini_batch_size: int | None = None) -> None:
        super().__init__(model, activation_fn, mini_batch_size)
        if isinstance(weighting_scheme, str) and weighting_scheme == "default":  # the reference's NDCGLoss2PPScheme()
            weighting_scheme = NDCGLoss2PPScheme()
        # As the reference: an explicit None means no weighting.
        self.weighting_scheme = weighting_scheme or NoWeightingScheme()
        if reduction_log not in ("natural", "binary"):
            raise ValueError(f"reduction_log must be 'natural' or 'binary', got {reduction_log!r}.")
        self.k, self.sigma, self.eps, self.reduction_log = k, sigma, eps, reduction_log

    def compute_loss_from_scores(self, scores, labels=None, **context):
        return lambda_loss(scores, labels, **self._masks(context), weighting_scheme=self.weighting_scheme,
                           k=self.k, sigma=self.sigma, eps=self.eps, reduction_log=self.reduction_log,
                           activation_fn=self.activation_fn)

    def get_config_dict(self):
        return {"weighting_scheme": self.weighting_scheme.config_name, "k": self.k, "sigma": self.sigma,
                "eps": self.eps, "reduction_log": self.reduction_log, "activation_fn": self._activation_name,
                "mini_batch_size": self.mini_batch_size}


class RankNetLoss(LambdaLoss):
    """Reference: ``RankNetLoss(model, k=None, sigma=1.0, eps=1e-10, reduction_log="binary",
    activation_fn=Identity(), mini_batch_size=None)``: LambdaLoss with :class:`NoWeightingScheme`."""

    def __init__(self, model=None, k: int | None = None, sigma: float = 1.0, eps: float = 1e-10,
                 reduction_log: str = "binary", activation_fn=IDENTITY, mini_batch_size: int | None = None) -> None:
        super().__init__(model, NoWeightingScheme(), k, sigma, eps, reduction_log, activation_fn, mini_batch_size)

    def get_config_dict(self):
        config = super().get_config_dict()
        del config["weighting_scheme"]
        return config
