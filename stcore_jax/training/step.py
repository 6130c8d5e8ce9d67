"""The pure train and eval steps, for any objective.

``objective(trainable, batch, key) -> (loss, aux)``: a scalar loss and a dict of scalar components to log,
``key`` the step's dropout key (``None`` in evaluation). A model family builds it from its loss
(:meth:`stcore_jax.training.task.Task.objective`); nothing here knows what the model or the loss is. An
objective whose value depends on the optimizer step (e.g. SpladeLoss's regulariser warm-up) sets the attribute
``uses_step = True`` and is called as ``objective(trainable, batch, key, step)`` with ``step`` the traced
``state["step"]`` (the steps taken before this one), so a changing step never retraces.

``train_step(state, batch) -> (state, metrics)`` with ``state = {"trainable": {"model": params, "loss":
{key: loss_params}}, "opt_state": ..., "step": int32, "skipped": int32}``. The dropout key of a step is
``fold_in(key(seed), step)`` and that of micro-batch ``i`` under accumulation ``fold_in(step_key, i)``; the
objective derives per-row keys from it, so the update does not depend on how the batch is sharded or
chunked. A non-finite loss or gradient skips the update (params and optimizer state unchanged) and is
counted in ``state["skipped"]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Objective = Callable[..., tuple[jax.Array, dict]]


def with_step(objective: Objective, step) -> Objective:
    """``objective`` as a three-argument function: the step bound if it ``uses_step``, else itself."""
    if getattr(objective, "uses_step", False):
        return lambda trainable, batch, key: objective(trainable, batch, key, step)
    return objective


def make_train_step(objective: Objective, tx, *, seed: int, accum_steps: int = 1, counter=None):
    """The train step of ``objective`` under the optimizer ``tx``. With ``accum_steps > 1`` every batch leaf
    has a leading micro-batch axis ``[accum_steps, B, ...]``; losses and gradients are averaged over the
    micro-batches (in-batch negatives stay per micro-batch, as in the reference). ``counter``: a one-element
    list incremented at each trace (the trainer's compile count)."""
    base_key = jax.random.key(seed)

    def train_step(state, batch):
        if counter is not None:
            counter[0] += 1  # traced once per compilation
        key = jax.random.fold_in(base_key, state["step"])
        grad_fn = jax.value_and_grad(with_step(objective, state["step"]), has_aux=True)
        if accum_steps == 1:
            (loss_val, comps), grads = grad_fn(state["trainable"], batch, key)
        else:
            def micro(carry, xs):
                i, mb = xs
                (lv, c), g = grad_fn(state["trainable"], mb, jax.random.fold_in(key, i))
                return jax.tree_util.tree_map(jnp.add, carry, (lv, c, g)), None

            first = jax.tree_util.tree_map(lambda x: x[0], batch)
            shapes = jax.eval_shape(lambda: grad_fn(state["trainable"], first, key))
            zeros = jax.tree_util.tree_map(jnp.zeros_like, shapes)
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            (loss_val, comps, grads), _ = jax.lax.scan(micro, zeros, (jnp.arange(accum_steps), batch))
            loss_val, comps, grads = jax.tree_util.tree_map(lambda x: x / accum_steps, (loss_val, comps, grads))
        # The logged norm is the model's, as the reference's (clip_grad_norm_ over model.parameters()); a
        # non-finite gradient of the loss's own parameters skips the step too.
        grad_norm = optax.tree.norm(grads["model"])
        ok = jnp.isfinite(loss_val) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(grads["loss"]))

        def update(trainable, opt_state):
            updates, opt_state = tx.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state

        # A branch, not ``where(ok, new, old)`` per leaf: the select is one more pass over parameters and both
        # Adam moments, which on CPU cost more than the Adam update itself (bench/RESULTS.md).
        new_trainable, opt_state = jax.lax.cond(ok, update, lambda t, o: (t, o), state["trainable"], state["opt_state"])
        new_state = {
            "trainable": new_trainable,
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "skipped": state["skipped"] + (~ok).astype(jnp.int32),
        }
        metrics = {"loss": loss_val.astype(jnp.float32), "grad_norm": grad_norm, "finite": ok,
                   **{k: v.astype(jnp.float32) for k, v in comps.items()}}
        return new_state, metrics

    return train_step


def make_eval_step(objective: Objective):
    """``eval_step(trainable, batch, step=0) -> {"loss": total, **components}`` (no dropout: ``key=None``);
    ``step``: what a step-dependent objective sees (the trainer passes the step of the last update)."""
    def eval_step(trainable, batch, step=0):
        total, comps = with_step(objective, step)(trainable, batch, None)
        return {"loss": total, **comps}

    return eval_step
