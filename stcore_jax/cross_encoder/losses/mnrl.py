"""MultipleNegativesRankingLoss for CrossEncoders: each anchor must score its own positive above in-batch
candidates and its own hard negatives.

Layout ``"mnrl"``: columns (anchor, positive, hard_1..hard_h). The candidates of a batch are flattened column
by column, as the reference does: candidate ``c * B + j`` is column ``c + 1`` of row ``j``. For row ``i`` the
collator forms the pairs ``(a_i, p_i)``, ``(a_i, candidate[idx[i, t]])`` for the ``k`` in-batch candidates
chosen by :func:`in_batch_candidates` (from the **global** batch: it runs on the whole batch before sharding),
then ``(a_i, hard_1,i) .. (a_i, hard_h,i)``; the model's logits are ``scores [B, 1 + k + h]`` and
``doc_mask [B, 1 + k + h]`` says which are real (candidates drawn from padded rows are not).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.base.loss import NEG, InputKind, LossInputs, f32, masked_mean, sharding_agnostic
from stcore_jax.cross_encoder.losses._common import (
    SIGMOID,
    CrossEncoderLoss,
    apply_activation,
    check_context,
    resolve_activation,
)

Array = jax.Array


def in_batch_candidates(batch_size: int, num_columns: int, num_negatives: int | None = None, *, key=None,
                        mask=None) -> tuple[Array, Array]:
    """Which in-batch candidates each anchor is paired with: ``(idx [B, k] int32, valid [B, k] bool)``.

    The candidates of anchor ``i`` are every candidate column of every other row (``B * C - C`` of them, C =
    ``num_columns`` = 1 + h). With ``num_negatives`` None or at least that many, all of them are taken in
    flattened order (the reference's order; deterministic). Otherwise ``k = num_negatives`` are drawn without
    replacement, uniformly among the real ones (Gumbel top-k with ``key``; the reference uses
    ``torch.multinomial``, so only the distribution matches). ``mask``: ``[B] bool`` real rows; candidates
    of padded rows are never drawn and are ``valid=False`` where taken.
    """
    total = batch_size * num_columns
    cand_row = np.arange(total) % batch_size
    row_valid = jnp.ones((batch_size,), bool) if mask is None else jnp.asarray(mask, bool).reshape(-1)
    other = cand_row[None, :] != np.arange(batch_size)[:, None]  # [B, total]
    eligible = jnp.asarray(other) & row_valid[cand_row][None, :]
    num_all = total - num_columns
    if num_negatives is None or num_negatives >= num_all:
        idx = jnp.asarray(np.nonzero(other)[1].reshape(batch_size, num_all), jnp.int32)
    else:
        if key is None:
            raise ValueError(f"Sampling num_negatives={num_negatives} of {num_all} in-batch candidates needs a key.")
        noise = jax.random.gumbel(key, (batch_size, total))
        _, idx = jax.lax.top_k(jnp.where(eligible, noise, -jnp.inf), num_negatives)
        idx = idx.astype(jnp.int32)
    return idx, jnp.take_along_axis(eligible, idx, axis=1)


@sharding_agnostic
def multiple_negatives_ranking(scores, *, scale: float | None = 10.0, activation_fn=jax.nn.sigmoid, mask=None,
                               doc_mask=None) -> Array:
    """mean_i CE(scale * a(scores_i), target 0).

    Args:
      scores: ``[B, 1 + k + h]`` logits of anchor i against [own positive, k in-batch candidates, own hard
        negatives]. scale: multiplies the activated logits (falsy: not applied, as the reference).
      mask: ``[B] bool`` real rows. doc_mask: ``[B, 1 + k + h] bool`` real entries (column 0 must be real).
    """
    z = apply_activation(activation_fn, f32(scores))
    if scale:
        z = z * scale
    if doc_mask is not None:
        z = jnp.where(jnp.asarray(doc_mask, bool), z, NEG)
    per_row = jax.nn.logsumexp(z, axis=-1) - z[:, 0]
    return masked_mean(per_row, mask)


class MultipleNegativesRankingLoss(CrossEncoderLoss):
    """Reference: ``MultipleNegativesRankingLoss(model, num_negatives=4, scale=10.0, activation_fn=Sigmoid())``."""

    pair_layout = "mnrl"
    min_inputs = 2
    label = "none"
    inputs_doc = "(anchor, positive[, hard_negative_1, ...])"

    def __init__(self, model=None, num_negatives: int | None = 4, scale: float = 10.0, activation_fn=SIGMOID) -> None:
        super().__init__(model)
        self.num_negatives = num_negatives
        self.scale = scale
        self.activation_fn, self._activation_name = resolve_activation(activation_fn)

    def candidate_indices(self, batch_size: int, num_columns: int, *, key=None, mask=None):
        """:func:`in_batch_candidates` with this loss's ``num_negatives`` (for the collator)."""
        return in_batch_candidates(batch_size, num_columns, self.num_negatives, key=key, mask=mask)

    def compute_loss_from_scores(self, scores, labels=None, **context):
        check_context(self.name, context)
        return multiple_negatives_ranking(scores, scale=self.scale, activation_fn=self.activation_fn,
                                          mask=context.get("mask"), doc_mask=context.get("doc_mask"))

    def get_config_dict(self):
        return {"scale": self.scale, "num_negatives": self.num_negatives, "activation_fn": self._activation_name}


class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """Reference: ``CachedMultipleNegativesRankingLoss(model, num_negatives=4, scale=10.0, activation_fn=Sigmoid(),
    mini_batch_size=32, show_progress_bar=False)``.

    The same loss; the declaration's ``mini_batch_size`` tells the objective to score the ``B * (1 + k + h)``
    pairs in chunks of that many pairs with GradCache (logits without activations kept, the loss's gradient
    w.r.t. the logits, then each chunk re-run with its gradient), so the loss value and gradients are the
    uncached ones.
    """

    def __init__(self, model=None, num_negatives: int | None = 4, scale: float = 10.0, activation_fn=SIGMOID,
                 mini_batch_size: int = 32, show_progress_bar: bool = False) -> None:
        super().__init__(model, num_negatives, scale, activation_fn)
        self.mini_batch_size = mini_batch_size
        self.show_progress_bar = show_progress_bar

    @property
    def inputs(self) -> LossInputs:
        return LossInputs(kind=InputKind.SCORES, pair_layout=self.pair_layout, mini_batch_size=self.mini_batch_size)

    def get_config_dict(self):
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}
