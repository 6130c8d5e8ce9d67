"""GISTEmbedLoss: in-batch-negatives InfoNCE where a guide model filters out likely false negatives.

The guide's embeddings are inputs of the pure function (computed by the trainer without
gradient, e.g. ``guide.encode`` or a frozen forward), one ``[B, D_guide]`` array per input
column. For each anchor ``i`` the guide's anchor-positive similarity ``g_i = cos(ga_i, gp_i)``
sets a threshold; every candidate whose *guide* similarity to the row exceeds ``g_i - margin``
(``"absolute"``) or ``g_i - |g_i| * margin`` (``"relative"``) is dropped from the softmax, except
the row's own positive.

Candidate pools per anchor row (all cosine similarity / ``temperature``): its positive and the
other positives (anchor-positive), optionally the other anchors (anchor-anchor), optionally the
positives vs the other positives (positive-positive), and each negative column (anchor-negative).

Sharding (SPEC D4), as the reference does it: with ``gather_across_devices=False`` every pool is
restricted to the anchor's own shard. With ``True`` the positive and negative pools span the global
batch, but the anchor-anchor pool stays within the shard, because sentence-transformers 6.2
gathers only the candidate columns, never the anchors (``GISTEmbedLoss`` and
``CachedGISTEmbedLoss`` alike). So ``num_shards`` matters in both modes when
``contrast_anchors=True``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import NEG, Loss, LossInputs, check_context, f32, row_mask, sharding_agnostic
from stcore_jax.sentence_transformer.losses.mnrl import _shard_blocks
from stcore_jax.similarity import cos_sim


@sharding_agnostic
def gist_embed_loss(anchor, positive, *negatives, guide, temperature: float = 0.01,
                    margin_strategy: str = "absolute", margin: float = 0.0, contrast_anchors: bool = True,
                    contrast_positives: bool = True, gather_across_devices: bool = False, num_shards: int = 1,
                    mask=None):
    """GISTEmbedLoss (sentence-transformers 6.2 ``GISTEmbedLoss`` / ``CachedGISTEmbedLoss`` math).

    Args:
      anchor, positive: ``[B, D]`` model embeddings; ``*negatives``: ``n >= 0`` more ``[B, D]``.
      guide: sequence of the guide's ``[B, D_g]`` embeddings for the same columns, same order
        (treated as constants: no gradient flows into them).
      temperature: logits = cosine / temperature (default 0.01).
      margin_strategy, margin: false-negative filter (``"absolute"`` or ``"relative"``; 0.0).
      contrast_anchors, contrast_positives: add the anchor-anchor / positive-positive pools.
      gather_across_devices, num_shards: see the module docstring.
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar: mean cross-entropy of each anchor's own positive over its pooled logits.
    """
    if margin_strategy not in ("absolute", "relative"):
        raise ValueError("margin_strategy must be 'absolute' or 'relative'.")
    cols = [f32(anchor), f32(positive)] + [f32(n) for n in negatives]
    guide = [jax.lax.stop_gradient(f32(g)) for g in guide]
    if len(guide) != len(cols):
        raise ValueError(f"GISTEmbedLoss got {len(cols)} embedding columns but {len(guide)} guide columns.")
    batch = cols[0].shape[0]
    valid = row_mask(mask, batch)
    cand_shards = 1 if gather_across_devices else int(num_shards)

    def threshold(guided_pos):
        if margin_strategy == "absolute":
            return guided_pos - margin
        return guided_pos - jnp.abs(guided_pos) * margin

    def filtered(sim, guided, thr, col_valid, protect=None):
        drop = guided > thr[:, None]
        if protect is not None:
            drop = drop & ~protect
        return jnp.where(drop | ~col_valid[None, :], NEG, sim / temperature)

    def candidate_pools(a, p, negs, ga, gp, gnegs, v):
        own = jnp.eye(a.shape[0], dtype=bool)
        guided_ap = cos_sim(ga, gp)
        thr = threshold(jnp.diagonal(guided_ap))
        ap = cos_sim(a, p)
        pools = [filtered(ap, guided_ap, thr, v, protect=own)]
        if contrast_positives:
            pools.append(filtered(cos_sim(p, p), cos_sim(gp, gp), thr, v))
        for n, gn in zip(negs, gnegs):
            pools.append(filtered(cos_sim(a, n), cos_sim(ga, gn), thr, v))
        return jnp.concatenate(pools, axis=1), jnp.diagonal(ap) / temperature, thr

    blk = [_shard_blocks(x, cand_shards) for x in cols]
    gblk = [_shard_blocks(x, cand_shards) for x in guide]
    logits, pos, thr = jax.vmap(candidate_pools)(blk[0], blk[1], blk[2:], gblk[0], gblk[1], gblk[2:],
                                                 _shard_blocks(valid, cand_shards))
    logits = logits.reshape(batch, -1)
    pos, thr = pos.reshape(batch), thr.reshape(batch)

    if contrast_anchors:
        # Anchors are never gathered in the reference: this pool is per shard in both modes.
        def anchor_pool(a, ga, t, v):
            return filtered(cos_sim(a, a), cos_sim(ga, ga), t, v)

        aa = jax.vmap(anchor_pool)(*(_shard_blocks(x, num_shards) for x in (cols[0], guide[0], thr, valid)))
        logits = jnp.concatenate([logits, aa.reshape(batch, -1)], axis=1)

    per_row = jax.nn.logsumexp(logits, axis=1) - pos
    if mask is None:
        return jnp.mean(per_row)
    return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


class GISTEmbedLoss(Loss):
    """Columns ``(anchor, positive)`` or ``(anchor, positive, negative)`` (the reference's
    ``GISTEmbedLoss`` limit; the pure function takes any number of negatives, as
    ``CachedGISTEmbedLoss`` does), no label. ``compute_loss_from_embeddings`` needs
    ``guide_embeddings=`` (the guide's embeddings of the same columns)."""

    min_inputs, max_inputs, label = 2, 3, "none"
    inputs_doc = "(anchor, positive) or (anchor, positive, negative)"

    def __init__(self, model=None, guide=None, temperature: float = 0.01, margin_strategy: str = "absolute",
                 margin: float = 0.0, contrast_anchors: bool = True, contrast_positives: bool = True,
                 gather_across_devices: bool = False, *, num_shards: int = 1) -> None:
        super().__init__(model)
        if guide is None:
            raise ValueError("GISTEmbedLoss needs a guide model.")
        if margin_strategy not in ("absolute", "relative"):
            raise ValueError("margin_strategy must be 'absolute' or 'relative'.")
        self.guide = guide
        self.temperature = temperature
        self.margin_strategy = margin_strategy
        self.margin = margin
        self.contrast_anchors = contrast_anchors
        self.contrast_positives = contrast_positives
        self.gather_across_devices = gather_across_devices
        self.num_shards = num_shards

    @property
    def inputs(self):
        """Takes the guide's embeddings of every column (``guide_embeddings=``)."""
        return LossInputs(guide=self.guide)

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, guide_embeddings=None, mask=None,
                                     num_shards=None, **context):
        check_context(self.name, context)
        if guide_embeddings is None:
            raise ValueError(f"{self.name} needs guide_embeddings= (the guide model's embeddings of each column).")
        return gist_embed_loss(
            *embeddings, guide=list(guide_embeddings), temperature=self.temperature,
            margin_strategy=self.margin_strategy, margin=self.margin, contrast_anchors=self.contrast_anchors,
            contrast_positives=self.contrast_positives, gather_across_devices=self.gather_across_devices,
            num_shards=num_shards or self.num_shards, mask=mask)

    def get_config_dict(self):
        return {"guide": self.guide, "temperature": self.temperature, "margin_strategy": self.margin_strategy,
                "margin": self.margin, "contrast_anchors": self.contrast_anchors,
                "contrast_positives": self.contrast_positives,
                "gather_across_devices": self.gather_across_devices}
