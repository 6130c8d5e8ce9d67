"""The train step (training/step.py) on a toy model: a linear map ``x @ w`` under a mean squared error,
on plain arrays. The step knows nothing about the model or the loss (it differentiates an objective), so
its arithmetic is checked against hand computation: the loss and the update SGD makes from the gradient,
the dropout key of each step and micro-batch, gradient accumulation, and the non-finite skip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stcore_jax.training.step import make_eval_step, make_train_step

D_IN, D_OUT, B = 3, 2, 8
SEED, LR = 5, 0.1


def _data(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D_IN, D_OUT)).astype(np.float32)
    x = rng.normal(size=(B, D_IN)).astype(np.float32)
    y = rng.normal(size=(B, D_OUT)).astype(np.float32)
    return w, x, y


def mse_objective(trainable, batch, key):
    """Mean over rows and outputs of ``(x @ w - y)^2``; ``aux`` logs the sum of the weights (a component)."""
    err = batch["x"] @ trainable["model"]["w"] - batch["y"]
    return jnp.mean(err**2), {"w_sum": jnp.sum(trainable["model"]["w"])}


def keyed_objective(trainable, batch, key):
    """The MSE plus ``uniform(key)``: a constant for the gradient, so the loss shows which key the step passed."""
    loss, aux = mse_objective(trainable, batch, key)
    return loss + jax.random.uniform(key, ()), aux


def kinked_objective(trainable, batch, key):
    """The MSE plus ``sqrt(|w[0, 0] - c|)``: finite everywhere, but its gradient is not at ``c = w[0, 0]``."""
    loss, aux = mse_objective(trainable, batch, key)
    return loss + jnp.sqrt(jnp.abs(trainable["model"]["w"][0, 0] - batch["c"])), aux


def _state(w, tx):
    trainable = {"model": {"w": jnp.asarray(w)}, "loss": {}}
    return {"trainable": trainable, "opt_state": tx.init(trainable), "step": jnp.int32(0), "skipped": jnp.int32(0)}


def _hand(w, x, y):
    """``(loss, dloss/dw)`` of the MSE, by hand: ``L = sum(E^2) / (B * D_OUT)``, ``dL/dw = 2 x^T E / (B * D_OUT)``."""
    err = x.astype(np.float64) @ w - y
    return (err**2).mean(), 2 * x.T.astype(np.float64) @ err / err.size


def test_loss_and_gradient_match_hand_computation():
    w, x, y = _data()
    tx = optax.sgd(LR)
    step = jax.jit(make_train_step(mse_objective, tx, seed=SEED))
    state, metrics = step(_state(w, tx), {"x": x, "y": y})
    loss, grad = _hand(w, x, y)
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-6)
    # SGD: w' = w - lr * grad, so the update is the gradient
    np.testing.assert_allclose((w - np.asarray(state["trainable"]["model"]["w"])) / LR, grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), np.linalg.norm(grad), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["w_sum"]), w.sum(), rtol=1e-6)  # aux components are logged
    assert bool(metrics["finite"]) and int(state["step"]) == 1 and int(state["skipped"]) == 0
    # the eval step: the same objective, no key
    out = jax.jit(make_eval_step(mse_objective))(state["trainable"], {"x": x, "y": y})
    np.testing.assert_allclose(float(out["loss"]), _hand(np.asarray(state["trainable"]["model"]["w"]), x, y)[0],
                               rtol=1e-6)


def test_dropout_keys_are_fold_in_of_the_seed_step_and_micro_batch():
    """Step ``s`` gets ``fold_in(key(seed), s)``; micro-batch ``i`` of it ``fold_in(that, i)``."""
    w, x, y = _data()
    tx = optax.sgd(LR)
    state = _state(w, tx)
    step = jax.jit(make_train_step(keyed_objective, tx, seed=SEED))
    _, m0 = step(state, {"x": x, "y": y})
    state["step"] = jnp.int32(7)
    _, m7 = step(state, {"x": x, "y": y})
    mse = _hand(w, x, y)[0]
    for s, m in ((0, m0), (7, m7)):
        u = float(jax.random.uniform(jax.random.fold_in(jax.random.key(SEED), s), ()))
        np.testing.assert_allclose(float(m["loss"]), mse + u, rtol=1e-6)

    accum = jax.jit(make_train_step(keyed_objective, tx, seed=SEED, accum_steps=2))
    halves = {"x": x.reshape(2, B // 2, D_IN), "y": y.reshape(2, B // 2, D_OUT)}
    _, m = accum(state, halves)
    step_key = jax.random.fold_in(jax.random.key(SEED), 7)
    expected = np.mean([_hand(w, x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4])[0]
                        + float(jax.random.uniform(jax.random.fold_in(step_key, i), ())) for i in range(2)])
    np.testing.assert_allclose(float(m["loss"]), expected, rtol=1e-6)


def test_two_accumulated_half_batches_equal_one_full_batch():
    w, x, y = _data(1)
    tx = optax.adam(LR)
    full, m_full = jax.jit(make_train_step(mse_objective, tx, seed=SEED))(_state(w, tx), {"x": x, "y": y})
    halves = {"x": x.reshape(2, B // 2, D_IN), "y": y.reshape(2, B // 2, D_OUT)}
    acc, m_acc = jax.jit(make_train_step(mse_objective, tx, seed=SEED, accum_steps=2))(_state(w, tx), halves)
    for k in ("loss", "grad_norm", "w_sum"):
        np.testing.assert_allclose(float(m_acc[k]), float(m_full[k]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(acc), jax.tree_util.tree_leaves(full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.asarray(full["trainable"]["model"]["w"]), w)  # it did train


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_step_changes_nothing_and_is_counted(where):
    w, x, y = _data(2)
    tx = optax.adam(LR)
    step = jax.jit(make_train_step(kinked_objective, tx, seed=SEED))
    good = {"x": x, "y": y, "c": np.float32(100.0)}
    state, _ = step(_state(w, tx), good)  # one good step: Adam's moments are non-zero
    before = jax.device_get(state)
    bad = {"x": x, "y": y.copy(), "c": np.float32(100.0)}
    if where == "loss":
        bad["y"][3, 1] = np.inf
    else:  # a finite loss with a non-finite gradient
        bad["c"] = before["trainable"]["model"]["w"][0, 0]
    after, metrics = step(state, bad)
    assert not bool(metrics["finite"])
    assert np.isfinite(float(metrics["loss"])) == (where == "gradient")
    assert int(after["skipped"]) == 1 and int(after["step"]) == 2
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(after["trainable"])),
                    jax.tree_util.tree_leaves(before["trainable"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(after["opt_state"])),
                    jax.tree_util.tree_leaves(before["opt_state"])):
        np.testing.assert_array_equal(a, b)
    # and the next finite step trains again
    again, metrics = step(after, good)
    assert bool(metrics["finite"]) and int(again["skipped"]) == 1
    assert not np.array_equal(np.asarray(again["trainable"]["model"]["w"]), before["trainable"]["model"]["w"])
