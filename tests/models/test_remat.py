"""Gradient checkpointing (per-layer jax.checkpoint): one remat per layer, same gradients.

The memory saving itself is not asserted here: XLA's CPU backend reports *more* temporary memory
for checkpointed programs (a plain 8-layer MLP: 136 MiB without, 192 MiB with jax.checkpoint), so
it can only be measured on an accelerator (bench/).
"""

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax import SentenceTransformer


def _grad_fn(model):
    def f(params, feats, key):
        return jnp.sum(model.forward(params, feats, dropout_key=key)["sentence_embedding"] ** 2)

    return jax.jit(jax.grad(f))


def test_remat_per_layer_same_gradients(tiny_dirs):
    model = SentenceTransformer(tiny_dirs["bert"]["dense"])
    feats = model.input_module.tokenize(["word " * 60] * 64)
    feats = {k: jnp.asarray(v) for k, v in feats.items()}
    keys = jax.random.split(jax.random.key(0), 64)
    plain = _grad_fn(model)
    g0 = plain(model.params, feats, keys)
    model.input_module.set_gradient_checkpointing(True)
    remat = _grad_fn(model)
    g1 = remat(model.params, feats, keys)
    jaxpr = str(jax.make_jaxpr(lambda p: model.forward(p, feats, dropout_key=keys))(model.params))
    assert jaxpr.count("remat") == model.input_module.config.num_hidden_layers
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
