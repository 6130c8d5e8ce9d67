"""The pure train and eval steps, for any objective.

``objective(trainable, batch, key) -> (loss, aux)``: a scalar loss and a dict of scalar components to log,
``key`` the step's dropout key (``None`` in evaluation). A model family builds it from its loss
(:meth:`stcore_jax.training.task.Task.objective`); nothing here knows what the model or the loss is. An
objective whose value depends on the optimizer step (e.g. SpladeLoss's regulariser warm-up) sets the attribute
``uses_step = True`` and is called as ``objective(trainable, batch, key, step)`` with ``step`` the traced
``state["step"]`` (the steps taken before this one), so a changing step never retraces. An objective whose model
carries non-parameter state that its forward updates (a SparseAutoEncoder's dead-latent counts) sets
``uses_model_state = True`` and is called with that state last, returning the new one:
``objective(trainable, batch, key[, step], model_state) -> (loss, (aux, new_model_state))``. :func:`bind` puts
every objective in that one form, so the steps treat them alike.

``train_step(state, batch) -> (state, metrics)`` with ``state = {"trainable": {"model": params, "loss":
{key: loss_params}}, "opt_state": ..., "step": int32, "skipped": int32}``. The dropout key of a step is
``fold_in(key(seed), step)`` and that of micro-batch ``i`` under accumulation ``fold_in(step_key, i)``; the
objective derives per-row keys from it, so the update does not depend on how the batch is sharded or
chunked. A non-finite loss or gradient skips the update (params and optimizer state unchanged) and is
counted in ``state["skipped"]``.

Model state: ``state["model_state"]`` (present only for a family that declares one, e.g. ``{"2": int32 [H]}``) is
threaded through the objective, micro-batch after micro-batch under accumulation (the scan's carry: the reference
runs the micro-batches' forwards one after the other), and is never differentiated. It advances even on a skipped
step: the reference updates its buffer inside the forward, before any gradient exists (and it skips nothing).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Objective = Callable[..., tuple[jax.Array, dict]]


def bind(objective: Objective, step) -> Callable:
    """``objective`` in the steps' one form, ``f(trainable, batch, key, model_state) -> (loss, (aux, model_state))``:
    ``step`` bound if it ``uses_step``; ``model_state`` passed and returned if it ``uses_model_state``, else passed
    through unchanged."""
    uses_step = getattr(objective, "uses_step", False)
    uses_state = getattr(objective, "uses_model_state", False)

    def bound(trainable, batch, key, model_state):
        args = (trainable, batch, key) + ((step,) if uses_step else ())
        if uses_state:
            return objective(*args, model_state)
        loss, aux = objective(*args)
        return loss, (aux, model_state)

    return bound


def accumulate(grad_fn, trainable, batch, key, model_state, accum_steps: int):
    """Sums of ``(loss, aux, grads)`` over the ``accum_steps`` micro-batches of ``batch`` (leaves ``[accum_steps, B,
    ...]``; micro-batch ``i`` with the key ``fold_in(key, i)``), and the model state after the last one: the carry
    threads it from micro-batch to micro-batch. ``grad_fn``: ``value_and_grad`` (``has_aux``) of a :func:`bind`
    objective."""
    def micro(carry, xs):
        sums, state = carry
        i, mb = xs
        (lv, (c, state)), g = grad_fn(trainable, mb, jax.random.fold_in(key, i), state)
        return (jax.tree_util.tree_map(jnp.add, sums, (lv, c, g)), state), None

    first = jax.tree_util.tree_map(lambda x: x[0], batch)
    (lv, (c, _)), g = jax.eval_shape(lambda: grad_fn(trainable, first, key, model_state))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, (lv, c, g))
    (sums, model_state), _ = jax.lax.scan(micro, (zeros, model_state), (jnp.arange(accum_steps), batch))
    return sums, model_state


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
        grad_fn = jax.value_and_grad(bind(objective, state["step"]), has_aux=True)
        model_state = state.get("model_state", {})
        if accum_steps == 1:
            (loss_val, (comps, model_state)), grads = grad_fn(state["trainable"], batch, key, model_state)
        else:
            (loss_val, comps, grads), model_state = accumulate(grad_fn, state["trainable"], batch, key, model_state,
                                                               accum_steps)
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
        if "model_state" in state:  # advanced by the forward, skipped step or not (module docstring)
            new_state["model_state"] = model_state
        metrics = {"loss": loss_val.astype(jnp.float32), "grad_norm": grad_norm, "finite": ok,
                   **{k: v.astype(jnp.float32) for k, v in comps.items()}}
        return new_state, metrics

    return train_step


def make_eval_step(objective: Objective):
    """``eval_step(trainable, batch, step=0, model_state=None) -> {"loss": total, **components}`` (no dropout:
    ``key=None``); ``step``: what a step-dependent objective sees (the trainer passes the step of the last update);
    ``model_state``: what an objective that ``uses_model_state`` reads (``None``: ``{}``); evaluation returns no
    new state (the objective does not advance it without a key: the reference's ``eval()`` forward)."""
    def eval_step(trainable, batch, step=0, model_state=None):
        total, (comps, _) = bind(objective, step)(trainable, batch, None, {} if model_state is None else model_state)
        return {"loss": total, **comps}

    return eval_step
