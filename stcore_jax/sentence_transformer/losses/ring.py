"""Ring MultipleNegativesRankingLoss: global in-batch negatives with per-device memory that does not
grow with the number of devices.

``multiple_negatives_ranking_loss(..., gather_across_devices=True)`` under ``jax.jit`` lets XLA
all-gather every candidate column, so each device holds the whole global batch of candidates and a
``b x C*B`` logit block (``b`` local rows, ``B = S*b`` global rows). Here, inside
``jax.shard_map``, each device keeps its ``b`` rows and passes one remote block of
``(anchors, documents, validity)`` around the ring with ``jax.lax.ppermute``. Each step scores the
local rows against that one block (``b x C*b`` logits) and folds them into an online
log-sum-exp, so memory per device is ``O(b*C*D + b*C*b)`` whatever ``S`` is.

The backward pass is a second ring (a ``jax.custom_vjp``): it recomputes each block's logits,
turns them into softmax weights with the saved per-row log-partitions, back-propagates through the
similarity function, and sends the remote block's gradient accumulator around with the block
(one extra hop brings it home). Letting autodiff differentiate the forward loop instead would save
every visited block, i.e. ``S`` blocks per device, defeating the point.

The result equals :func:`~stcore_jax.sentence_transformer.losses.mnrl.multiple_negatives_ranking_loss` with
``gather_across_devices=True`` (values and gradients), for every ``directions`` /
``partition_mode`` / ``hardness_mode`` and for padded rows (``mask``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from stcore_jax.base.loss import f32, resolve_similarity, row_mask
from stcore_jax.sentence_transformer.losses.mnrl import (
    DIRECTIONS,
    combine_lse,
    mnrl_block_logits,
    validate_mnrl_options,
)
from stcore_jax.similarity import cos_sim


def ring_multiple_negatives_ranking_loss(anchor, positive, *negatives, mesh: Mesh, axis_name: str = "data",
                                         scale: float = 20.0, similarity_fct: Callable | str = cos_sim,
                                         directions: Sequence[str] = ("query_to_doc",),
                                         partition_mode: str = "joint", hardness_mode: str | None = None,
                                         hardness_strength: float = 0.0, mask=None):
    """MNRL over the global batch, computed as a ring over ``mesh`` axis ``axis_name``.

    Args:
      anchor, positive, *negatives: global ``[B, D]`` arrays (``B`` divisible by the axis size),
        ideally already sharded ``P(axis_name)`` on rows.
      mesh, axis_name: the data-parallel mesh axis to ring over.
      mask: optional ``[B] bool``; other arguments as in
        :func:`~stcore_jax.sentence_transformer.losses.mnrl.multiple_negatives_ranking_loss`.

    Returns:
      float32 scalar, equal to MNRL with ``gather_across_devices=True``.
    """
    directions = validate_mnrl_options(scale, directions, partition_mode, hardness_mode, hardness_strength)
    sim_fn = resolve_similarity(similarity_fct)
    num_dev = mesh.shape[axis_name]
    queries = f32(anchor)
    docs = jnp.stack([f32(positive)] + [f32(n) for n in negatives])  # [C, B, D]
    batch = queries.shape[0]
    if batch % num_dev:
        raise ValueError(f"Batch size {batch} is not divisible by the {num_dev} devices on axis {axis_name!r}.")
    b = batch // num_dev
    valid = row_mask(mask, batch).astype(jnp.float32)
    # Lay the inputs out as the shard_map specs say (explicit-sharding meshes require it).
    explicit = dict(zip(mesh.axis_names, mesh.axis_types))[axis_name] == AxisType.Explicit
    place = jax.reshard if explicit else jax.lax.with_sharding_constraint
    queries = place(queries, NamedSharding(mesh, P(axis_name)))
    docs = place(docs, NamedSharding(mesh, P(None, axis_name)))
    valid = place(valid, NamedSharding(mesh, P(axis_name)))
    shift = [(j, (j + 1) % num_dev) for j in range(num_dev)]
    block_kw = dict(similarity_fct=sim_fn, scale=scale, directions=directions, hardness_mode=hardness_mode,
                    hardness_strength=hardness_strength)

    def ids(device):
        return device * b + jnp.arange(b)

    def block(q_loc, d_loc, q_blk, d_blk, v_blk, me, step):
        origin = (me - step) % num_dev
        return mnrl_block_logits(q_loc, d_loc[0], ids(me), q_blk, d_blk, ids(origin), v_blk > 0, **block_kw)

    def hop(*xs):
        return tuple(jax.lax.ppermute(x, axis_name, shift) for x in xs)

    # Fixed order of the per-direction log-partitions saved for the backward pass.
    names = [k for k in DIRECTIONS if k in directions]

    # ---- forward: online log-sum-exp over the ring ------------------------------------------------
    def fwd_shard(q_loc, d_loc, v_loc):
        me = jax.lax.axis_index(axis_name)

        def fold(stats, logits):
            out = {}
            for k, x in logits.items():
                m, s = stats[k]
                m_new = jnp.maximum(m, jnp.max(x, axis=1))
                out[k] = (m_new, s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(x - m_new[:, None]), axis=1))
            return out

        logits, pos = block(q_loc, d_loc, q_loc, d_loc, v_loc, me, 0)
        stats = fold({k: (jnp.full((b,), -jnp.inf), jnp.zeros((b,))) for k in logits}, logits)

        def body(step, carry):
            q_blk, d_blk, v_blk, stats = carry
            q_blk, d_blk, v_blk = hop(q_blk, d_blk, v_blk)
            logits, _ = block(q_loc, d_loc, q_blk, d_blk, v_blk, me, step)
            return q_blk, d_blk, v_blk, fold(stats, logits)

        *_, stats = jax.lax.fori_loop(1, num_dev, body, (q_loc, d_loc, v_loc, stats))
        lse = {k: m + jnp.log(s) for k, (m, s) in stats.items()}
        per_row = combine_lse(lse, partition_mode) - pos
        local_sum = jnp.sum(jnp.where(v_loc > 0, per_row, 0.0))
        count = jax.lax.psum(jnp.sum(v_loc), axis_name)
        loss = jax.lax.psum(local_sum, axis_name) / jnp.maximum(count, 1.0)
        return loss, jnp.stack([lse[k] for k in names]), count

    fwd_mapped = jax.shard_map(fwd_shard, mesh=mesh, in_specs=(P(axis_name), P(None, axis_name), P(axis_name)),
                               out_specs=(P(), P(None, axis_name), P()), check_vma=False)

    # ---- backward: recompute each block, ring the remote block's gradient home -------------------
    def bwd_shard(q_loc, d_loc, v_loc, lse_stack, count, g):
        me = jax.lax.axis_index(axis_name)
        row_w = g * v_loc / jnp.maximum(count, 1.0)  # d loss / d per_row
        lse = dict(zip(names, lse_stack))
        joint = combine_lse(lse, partition_mode)

        def step_grads(q_blk, d_blk, v_blk, step):
            def f(q_rows, d_rows, q_cols, d_cols):
                return block(q_rows, d_rows, q_cols, d_cols, v_blk, me, step)

            (logits, _), vjp = jax.vjp(f, q_loc, d_loc, q_blk, d_blk)
            # d per_row / d logit = softmax weight (joint partition, or 1/|dirs| of each direction's).
            if partition_mode == "joint":
                d_logits = {k: row_w[:, None] * jnp.exp(x - joint[:, None]) for k, x in logits.items()}
            else:
                d_logits = {k: (row_w / len(names))[:, None] * jnp.exp(x - lse[k][:, None])
                            for k, x in logits.items()}
            d_pos = jnp.where(step == 0, -row_w, 0.0)  # the own positive lives in the own block
            return vjp((d_logits, d_pos))

        def body(step, carry):
            q_blk, d_blk, v_blk, dq_blk, dd_blk, dq_loc, dd_loc = carry
            gq_r, gd_r, gq_c, gd_c = step_grads(q_blk, d_blk, v_blk, step)
            q_blk, d_blk, v_blk, dq_blk, dd_blk = hop(q_blk, d_blk, v_blk, dq_blk + gq_c, dd_blk + gd_c)
            return q_blk, d_blk, v_blk, dq_blk, dd_blk, dq_loc + gq_r, dd_loc + gd_r

        zeros_q, zeros_d = jnp.zeros_like(q_loc), jnp.zeros_like(d_loc)
        carry = (q_loc, d_loc, v_loc, zeros_q, zeros_d, zeros_q, zeros_d)
        q_blk, d_blk, v_blk, dq_blk, dd_blk, dq_loc, dd_loc = jax.lax.fori_loop(0, num_dev - 1, body, carry)
        # Last block: compute, then only its gradient accumulator needs the final hop home.
        gq_r, gd_r, gq_c, gd_c = step_grads(q_blk, d_blk, v_blk, num_dev - 1)
        dq_blk, dd_blk = hop(dq_blk + gq_c, dd_blk + gd_c)
        return dq_loc + gq_r + dq_blk, dd_loc + gd_r + dd_blk

    bwd_mapped = jax.shard_map(
        bwd_shard, mesh=mesh,
        in_specs=(P(axis_name), P(None, axis_name), P(axis_name), P(None, axis_name), P(), P()),
        out_specs=(P(axis_name), P(None, axis_name)), check_vma=False)

    @jax.custom_vjp
    def ring_loss(q, d, v):
        return fwd_mapped(q, d, v)[0]

    def ring_fwd(q, d, v):
        loss, lse_stack, count = fwd_mapped(q, d, v)
        return loss, (q, d, v, lse_stack, count)

    def ring_bwd(res, g):
        q, d, v, lse_stack, count = res
        dq, dd = bwd_mapped(q, d, v, lse_stack, count, g)
        return dq, dd, jnp.zeros_like(v)

    ring_loss.defvjp(ring_fwd, ring_bwd)
    return ring_loss(queries, docs, valid)
