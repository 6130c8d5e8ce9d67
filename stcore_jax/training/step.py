"""The pure train and eval steps.

``train_step(state, batch) -> (state, metrics)`` with ``state = {"trainable": {"model": params,
"loss": {key: loss_params}}, "opt_state": ..., "step": int32, "skipped": int32}``. Dropout keys are
``fold_in(key(seed), step)``; :func:`stcore_jax.sentence_transformer.losses.embed.compute_loss` derives per-column,
per-global-row keys from it, so the update does not depend on how the batch is sharded or chunked. A non-finite loss or gradient skips the update
(params and optimizer state unchanged) and is counted in ``state["skipped"]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from stcore_jax.sentence_transformer.losses.embed import compute_loss


def _total(out):
    if isinstance(out, dict):
        return sum(out.values()), dict(out)
    return out, {}


def _loss_params(trainable, loss_key):
    """This loss's own parameters: ``trainable["loss"][loss_key]`` (``{}`` if it owns none); the whole
    ``trainable["loss"]`` when ``loss_key`` is None."""
    return trainable["loss"] if loss_key is None else trainable["loss"].get(loss_key, {})


def make_train_step(forward, loss, tx, *, seed: int, num_shards: int, accum_steps: int = 1, counter=None,
                    loss_key=None):
    """With ``accum_steps > 1`` every batch leaf has a leading micro-batch axis ``[accum_steps, B, ...]``;
    gradients are averaged over micro-batches (in-batch negatives stay per micro-batch, as in the reference).
    ``loss_key``: which subtree of ``trainable["loss"]`` holds ``loss``'s own parameters (the trainer keys
    them by dataset name, so that two parameterised losses never share one)."""
    base_key = jax.random.key(seed)

    def objective(trainable, batch, key):
        out = compute_loss(loss, forward, trainable["model"], batch["columns"], batch.get("label"), dropout_key=key,
                           mask=batch["mask"], num_shards=num_shards, loss_params=_loss_params(trainable, loss_key),
                           packed=batch.get("packed"))
        return _total(out)

    def train_step(state, batch):
        if counter is not None:
            counter[0] += 1  # traced once per compilation
        key = jax.random.fold_in(base_key, state["step"])
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        if accum_steps == 1:
            (loss_val, comps), grads = grad_fn(state["trainable"], batch, key)
        else:
            def micro(carry, xs):
                i, mb = xs
                (l, c), g = grad_fn(state["trainable"], mb, jax.random.fold_in(key, i))
                return jax.tree_util.tree_map(jnp.add, carry, (l, c, g)), None

            zeros = jax.tree_util.tree_map(
                jnp.zeros_like, jax.eval_shape(lambda: grad_fn(state["trainable"], jax.tree_util.tree_map(lambda x: x[0], batch), key)))
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


def make_eval_step(forward, loss, *, num_shards: int, loss_key=None):
    def eval_step(trainable, batch):
        out = compute_loss(loss, forward, trainable["model"], batch["columns"], batch.get("label"), dropout_key=None,
                           mask=batch["mask"], num_shards=num_shards, loss_params=_loss_params(trainable, loss_key),
                           packed=batch.get("packed"))
        total, comps = _total(out)
        return {"loss": total, **comps}

    return eval_step
