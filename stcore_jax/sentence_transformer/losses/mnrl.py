"""MultipleNegativesRankingLoss (InfoNCE with in-batch and hard negatives) and its symmetric form.

Layout. Input columns are ``(anchor, positive, negative_1, ..., negative_n)``, each ``[B, D]``,
``n >= 0``. The candidate documents of a block are laid out column-major, ``[P, N_1, ..., N_n]``,
so candidate ``c * b + j`` is column ``c`` of row ``j``, and anchor ``i``'s own positive is
candidate ``i`` (its own hard negatives are ``c * b + i``). Because the function receives one
array per column, the gathered layout that sentence-transformers got wrong before PR #3453
(``P N N P N N ...`` when per-device candidate blocks were concatenated before gathering) cannot
arise: a global positive column is always ``P_0 P_1 ... P_{S-1}`` in row order.

Global negatives (SPEC D4). ``gather_across_devices=True``: every anchor is scored against every
candidate of the global batch. ``False`` (default, as in the reference): the batch is split into
``num_shards`` contiguous shards (the data-parallel shards of a batch-sharded array) and each
anchor is scored only against candidates in its own shard; the loss is the mean over all global
anchors. This is the reference's per-device behaviour (each GPU scores its local batch), so
hyperparameters such as ``scale`` and the per-device batch size port unchanged, and it needs no
cross-device communication: the per-shard score blocks are a batched matmul over a leading shard
axis that XLA keeps local to each device. With one shard the two modes are identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import (
    NEG,
    Loss,
    check_context,
    f32,
    resolve_similarity,
    row_mask,
    sharding_agnostic,
    similarity_fct_name,
)
from stcore_jax.similarity import cos_sim

logger = logging.getLogger(__name__)

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")
# Anchors per row block when a shard holds more rows than this (and a multiple of it): bounds the
# live score matrix to [ROW_BLOCK, C * b] instead of [b, C * b].
ROW_BLOCK = 4096


def validate_mnrl_options(scale, directions, partition_mode, hardness_mode, hardness_strength) -> tuple[str, ...]:
    """The reference's constructor checks; returns ``directions`` as a tuple."""
    if not scale > 0:
        raise ValueError("Scale must be a positive value.")
    directions = tuple(directions)
    if not directions:
        raise ValueError("At least one direction must be specified.")
    invalid = set(directions) - set(DIRECTIONS)
    if invalid:
        raise ValueError(f"Invalid directions: {invalid}. Valid: {set(DIRECTIONS)}")
    if "query_to_doc" not in directions:
        raise ValueError("'query_to_doc' direction is required (contains the positive pair).")
    if partition_mode not in ("joint", "per_direction"):
        raise ValueError(f"partition_mode must be 'joint' or 'per_direction', got {partition_mode}")
    if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
        raise ValueError(
            "partition_mode='per_direction' requires every direction's candidate pool to include the positive "
            "pair; 'query_to_query' and 'doc_to_doc' never do. Use partition_mode='joint' instead.")
    if hardness_mode not in HARDNESS_MODES:
        raise ValueError(f"hardness_mode must be one of {set(HARDNESS_MODES)}, got {hardness_mode!r}")
    if hardness_strength < 0.0:
        raise ValueError("hardness_strength must be non-negative.")
    return directions


def mnrl_block_logits(q_rows, p_rows, row_ids, q_cols, docs_cols, col_ids, col_valid, *, similarity_fct, scale,
                      directions, hardness_mode, hardness_strength):
    """Scaled logits of ``b`` local rows against one block of ``b'`` candidate rows.

    Args:
      q_rows, p_rows: ``[b, D]`` the rows' anchors and positives.
      row_ids: ``[b]`` int, global index of each row (identifies "own" candidates).
      q_cols: ``[b', D]`` anchors of the candidate block; ``docs_cols``: ``[C, b', D]`` its documents
        (positive first, then the hard-negative columns).
      col_ids: ``[b']`` int global index of each candidate row; ``col_valid``: ``[b'] bool``.

    Returns:
      ``(logits, positive)``: ``logits`` maps each direction to ``[b, k]`` float32 logits (masked
      entries are ``NEG``); ``positive`` is ``[b]``, the ``query_to_doc`` logit of each row's own
      positive (0 where that positive is not in this block).
    """
    num_cols, b_cols, dim = docs_cols.shape
    docs_flat = docs_cols.reshape(num_cols * b_cols, dim)
    own = row_ids[:, None] == col_ids[None, :]  # [b, b']
    own_doc = jnp.tile(own, (1, num_cols))  # [b, C*b']: every column of the row's own tuple
    is_pos_col = jnp.concatenate([jnp.ones((b_cols,), bool), jnp.zeros(((num_cols - 1) * b_cols,), bool)])
    own_pos = own_doc & is_pos_col[None, :]
    valid_doc = jnp.tile(col_valid, num_cols)[None, :]
    valid_q = col_valid[None, :]

    logits = {}
    q2d = f32(similarity_fct(q_rows, docs_flat))
    q2d_logits = q2d * scale
    if hardness_mode is not None and hardness_strength > 0.0:
        # Penalty on the unscaled similarity, without gradient (Lan et al. 2025, Eq. 5).
        penalty = hardness_strength * jax.lax.stop_gradient(q2d)
        if hardness_mode == "in_batch_negatives":
            penalised = ~own_doc
        elif hardness_mode == "hard_negatives":
            penalised = own_doc & ~is_pos_col[None, :]
        else:  # all_negatives
            penalised = ~own_pos
        q2d_logits = q2d_logits + jnp.where(penalised, penalty, 0.0)
    logits["query_to_doc"] = jnp.where(valid_doc, q2d_logits, NEG)
    positive = jnp.sum(jnp.where(own_pos, q2d_logits, 0.0), axis=1)

    if "query_to_query" in directions:
        q2q = f32(similarity_fct(q_rows, q_cols)) * scale
        logits["query_to_query"] = jnp.where(valid_q & ~own, q2q, NEG)
    if "doc_to_query" in directions:
        d2q = f32(similarity_fct(q_cols, p_rows)).T * scale
        logits["doc_to_query"] = jnp.where(valid_q, d2q, NEG)
    if "doc_to_doc" in directions:
        d2d = f32(similarity_fct(docs_flat, p_rows)).T * scale
        logits["doc_to_doc"] = jnp.where(valid_doc & ~own_doc, d2d, NEG)
    return logits, positive


def combine_lse(lse_per_direction: dict, partition_mode: str):
    """Per-row log-partition from per-direction log-sum-exps: one joint softmax, or the mean."""
    values = jnp.stack(list(lse_per_direction.values()))
    if partition_mode == "joint":
        return jax.nn.logsumexp(values, axis=0)
    return jnp.mean(values, axis=0)


def _shard_blocks(x, num_shards):
    """``[B, ...]`` -> ``[S, B/S, ...]`` (contiguous shards, as a batch-sharded array is laid out)."""
    if x.shape[0] % num_shards:
        raise ValueError(f"Batch size {x.shape[0]} is not divisible by num_shards={num_shards}.")
    return x.reshape((num_shards, x.shape[0] // num_shards) + x.shape[1:])


@sharding_agnostic
def multiple_negatives_ranking_loss(anchor, positive, *negatives, scale: float = 20.0,
                                    similarity_fct: Callable | str = cos_sim, gather_across_devices: bool = False,
                                    directions: Sequence[str] = ("query_to_doc",), partition_mode: str = "joint",
                                    hardness_mode: str | None = None, hardness_strength: float = 0.0,
                                    num_shards: int = 1, mask=None):
    """MultipleNegativesRankingLoss (sentence-transformers 6.2 ``MultipleNegativesRankingLoss``).

    Args:
      anchor, positive: ``[B, D]`` query and positive-document embeddings.
      *negatives: ``n >= 0`` arrays ``[B, D]``: hard negatives of each row.
      scale: logits = ``similarity * scale`` (``1 / temperature``); default 20.
      similarity_fct: matrix similarity (``cos_sim`` default; or a name such as ``"dot_score"``).
      gather_across_devices: score against the global batch (True) or only the own shard (False,
        default); see the module docstring. Irrelevant when ``num_shards == 1``.
      directions: subset of ``("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")``
        that contains ``"query_to_doc"``.
      partition_mode: ``"joint"`` (one softmax over all directions) or ``"per_direction"`` (mean of
        per-direction log-partitions; not with q2q/d2d).
      hardness_mode, hardness_strength: add ``strength * stop_grad(sim)`` to the logits of in-batch
        negatives, own hard negatives, or all negatives.
      num_shards: static data-parallel degree of the batch axis (``B % num_shards == 0``).
      mask: optional ``[B] bool``; padded rows are neither anchors nor candidates.

    Returns:
      float32 scalar: mean over (valid) anchors of ``logsumexp(logits_i) - logit_i(own positive)``.
      Differentiable w.r.t. every embedding array, so a GradCache variant can call it on the full
      embedding matrices.
    """
    directions = validate_mnrl_options(scale, directions, partition_mode, hardness_mode, hardness_strength)
    similarity_fct = resolve_similarity(similarity_fct)
    docs = jnp.stack([f32(positive)] + [f32(n) for n in negatives])  # [C, B, D]
    anchor = f32(anchor)
    batch = anchor.shape[0]
    valid = row_mask(mask, batch)
    shards = 1 if gather_across_devices else int(num_shards)

    q = _shard_blocks(anchor, shards)  # [S, b, D]
    d = jnp.moveaxis(_shard_blocks(jnp.moveaxis(docs, 1, 0), shards), 2, 1)  # [S, C, b, D]
    v = _shard_blocks(valid, shards)  # [S, b]
    ids = jnp.arange(batch // shards)

    def one_shard(q_s, d_s, v_s):
        def rows(q_r, p_r, ids_r):  # per-row loss of a block of anchors against the whole shard
            logits, pos = mnrl_block_logits(q_r, p_r, ids_r, q_s, d_s, ids, v_s, similarity_fct=similarity_fct,
                                            scale=scale, directions=directions, hardness_mode=hardness_mode,
                                            hardness_strength=hardness_strength)
            lse = {k: jax.nn.logsumexp(x, axis=1) for k, x in logits.items()}
            return combine_lse(lse, partition_mode) - pos

        b = q_s.shape[0]
        if b <= ROW_BLOCK or b % ROW_BLOCK:
            return rows(q_s, d_s[0], ids)
        # Large batches (GradCache at 64k rows): the [b, C*b] score matrix and its softmax would not fit,
        # so anchors go in row blocks, each block's scores recomputed in the backward pass.
        blocks = lambda x: x.reshape((b // ROW_BLOCK, ROW_BLOCK) + x.shape[1:])  # noqa: E731
        per_block = jax.lax.map(jax.checkpoint(lambda xs: rows(*xs)), (blocks(q_s), blocks(d_s[0]), blocks(ids)))
        return per_block.reshape(b)

    per_row = jax.vmap(one_shard)(q, d, v).reshape(batch)
    if mask is None:
        return jnp.mean(per_row)
    return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def multiple_negatives_symmetric_ranking_loss(anchor, positive, *negatives, scale: float = 20.0,
                                              similarity_fct: Callable | str = cos_sim,
                                              gather_across_devices: bool = False, num_shards: int = 1, mask=None):
    """MultipleNegativesSymmetricRankingLoss: MNRL with ``directions=("query_to_doc", "doc_to_query")``
    and ``partition_mode="per_direction"`` (as sentence-transformers 6.2 defines it). Shapes as in
    :func:`multiple_negatives_ranking_loss`; hard negatives, if given, join the query_to_doc pool."""
    return multiple_negatives_ranking_loss(
        anchor, positive, *negatives, scale=scale, similarity_fct=similarity_fct,
        gather_across_devices=gather_across_devices, directions=("query_to_doc", "doc_to_query"),
        partition_mode="per_direction", num_shards=num_shards, mask=mask)


class MultipleNegativesRankingLoss(Loss):
    """Columns ``(anchor, positive, negative_1, ..., negative_n)``, no label. See
    :func:`multiple_negatives_ranking_loss`. ``num_shards`` (keyword-only, a JAX addition) is the
    data-parallel degree the trainer runs with; it can also be passed per call."""

    min_inputs, max_inputs, label = 2, None, "none"
    inputs_doc = "(anchor, positive, negative_1, ..., negative_n)"

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable | str = cos_sim,
                 gather_across_devices: bool = False, directions: Sequence[str] = ("query_to_doc",),
                 partition_mode: str = "joint", hardness_mode: str | None = None, hardness_strength: float = 0.0,
                 *, num_shards: int = 1) -> None:
        super().__init__(model)
        self.directions = validate_mnrl_options(scale, directions, partition_mode, hardness_mode, hardness_strength)
        self.scale = scale
        self.similarity_fct = resolve_similarity(similarity_fct)
        self.gather_across_devices = gather_across_devices
        self.partition_mode = partition_mode
        self.hardness_mode = hardness_mode
        self.hardness_strength = hardness_strength
        self.num_shards = num_shards
        if hardness_mode is not None and hardness_strength == 0.0:
            logger.warning(f"hardness_mode={hardness_mode!r} is set but hardness_strength=0.0, so hardness weighting "
                           "has no effect. Set hardness_strength to a positive value to enable it.")

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, num_shards=None, **context):
        check_context(self.name, context)
        if len(embeddings) < 2:
            raise ValueError(f"{self.name} expects at least 2 embeddings, got {len(embeddings)}")
        return multiple_negatives_ranking_loss(
            *embeddings, scale=self.scale, similarity_fct=self.similarity_fct,
            gather_across_devices=self.gather_across_devices, directions=self.directions,
            partition_mode=self.partition_mode, hardness_mode=self.hardness_mode,
            hardness_strength=self.hardness_strength, num_shards=num_shards or self.num_shards, mask=mask)

    def get_config_dict(self):
        return {"scale": self.scale, "similarity_fct": similarity_fct_name(self.similarity_fct),
                "gather_across_devices": self.gather_across_devices, "directions": self.directions,
                "partition_mode": self.partition_mode, "hardness_mode": self.hardness_mode,
                "hardness_strength": self.hardness_strength}


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """Deprecated in the reference in favour of MNRL with ``directions=("query_to_doc",
    "doc_to_query"), partition_mode="per_direction"``, which is exactly what this is. Like the
    reference (which subclasses MNRL), extra negative columns are accepted and join query_to_doc."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable | str = cos_sim,
                 gather_across_devices: bool = False, *, num_shards: int = 1) -> None:
        super().__init__(model, scale=scale, similarity_fct=similarity_fct,
                         gather_across_devices=gather_across_devices, directions=("query_to_doc", "doc_to_query"),
                         partition_mode="per_direction", num_shards=num_shards)

    def get_config_dict(self):
        return {"scale": self.scale, "similarity_fct": similarity_fct_name(self.similarity_fct),
                "gather_across_devices": self.gather_across_devices}
