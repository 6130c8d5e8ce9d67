"""Gradient checkpointing: the same gradients, and (homogeneous encoders) a checkpointed scan over the layers.

BERT-like encoders (one layer structure) run their layers as a ``lax.scan`` over stacked parameters with a
checkpointed body when gradient checkpointing is on (``models/layers.py run_layers``): the backward pass keeps
each layer's input only. Unrolled ``jax.checkpoint`` per layer left the recomputation's placement to XLA, whose
CPU scheduler ran it early and kept nearly every activation (bench/RESULTS.md); the temporary-memory check below
is what failed then.
"""

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax import SentenceTransformer


def _loss(model):
    def f(params, feats, key):
        return jnp.sum(model.forward(params, feats, dropout_key=key)["sentence_embedding"] ** 2)

    return f


def test_remat_same_gradients_and_less_memory(tiny_dirs):
    model = SentenceTransformer(tiny_dirs["bert"]["dense"])
    feats = model.input_module.tokenize(["word " * 60] * 64)
    feats = {k: jnp.asarray(v) for k, v in feats.items()}
    keys = jax.random.split(jax.random.key(0), 64)
    plain = jax.jit(jax.grad(_loss(model))).lower(model.params, feats, keys).compile()
    g0 = plain(model.params, feats, keys)
    hidden0 = model.forward(model.params, feats, dropout_key=keys, output_hidden_states=True)["all_layer_embeddings"]
    model.input_module.set_gradient_checkpointing(True)
    remat = jax.jit(jax.grad(_loss(model))).lower(model.params, feats, keys).compile()
    g1 = remat(model.params, feats, keys)
    jaxpr = str(jax.make_jaxpr(lambda p: model.forward(p, feats, dropout_key=keys))(model.params))
    assert jaxpr.count("remat") == 1 and "scan" in jaxpr  # one checkpointed body, scanned over the layers
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    # Per-layer hidden states (AdaptiveLayerLoss, output_hidden_states) come out of the scan unchanged.
    hidden1 = model.forward(model.params, feats, dropout_key=keys, output_hidden_states=True)["all_layer_embeddings"]
    assert len(hidden1) == len(hidden0) == model.input_module.config.num_hidden_layers + 1
    for a, b in zip(hidden0, hidden1):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    t0, t1 = (c.memory_analysis().temp_size_in_bytes for c in (plain, remat))
    assert t1 < 0.6 * t0, (t0, t1)
