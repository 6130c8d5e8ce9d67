"""Parity with sentence-transformers 6.2 for the loss modifiers (MatryoshkaLoss, AdaptiveLayerLoss,
Matryoshka2dLoss), values and gradients w.r.t. the (per-layer) embeddings, plus the PRNG-key paths.

The reference modifiers work by decorating the model's forward, so they are run here with a model
whose forward returns our embeddings: a stub module for MatryoshkaLoss, and the tiny BERT
SentenceTransformer with its Transformer's forward replaced (writing ``token_embeddings`` and
``all_layer_embeddings`` as the real one does, one token per row so mean pooling is the identity)
for the layer-wise losses.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer import losses as ref

import stcore_jax.losses as L
from losses_reference import DIM, assert_parity, columns, randn

B = 8
LAYERS = 4  # hidden states: embedding output + 3 transformer layers


class StubModel(torch.nn.Module):
    """Returns ``outputs[features["col"]]`` as the sentence embedding."""

    def __init__(self):
        super().__init__()
        self.outputs = None

    def get_embedding_dimension(self):
        return DIM

    def forward(self, features):
        return {"sentence_embedding": self.outputs[features["col"]]}


def _features(n):
    return [{"col": c} for c in range(n)]


def _pair_labels():
    return np.random.default_rng(50).random(B).astype(np.float32)


INNER = {
    # name: (reference factory, ours factory, number of columns, labels)
    "mnrl": (lambda m: ref.MultipleNegativesRankingLoss(m), lambda: L.MultipleNegativesRankingLoss(None), 3, None),
    "cosent": (lambda m: ref.CoSENTLoss(m), lambda: L.CoSENTLoss(None), 2, _pair_labels()),
    "mse": (lambda m: ref.MSELoss(m), lambda: L.MSELoss(None), 2, randn(51, B, DIM)),  # labels truncated too
}


@pytest.mark.parametrize("inner", ["mnrl", "mse", "cosent"])  # MatryoshkaLoss(CoSENTLoss): the usual STS recipe
def test_matryoshka(inner):
    ref_inner, our_inner, n, labels = INNER[inner]
    stub = StubModel()
    dims, weights = [4, 16, 8], [0.25, 1.0, 0.5]  # deliberately unsorted
    reference = ref.MatryoshkaLoss(stub, ref_inner(stub), dims, matryoshka_weights=weights)
    ours = L.MatryoshkaLoss(None, our_inner(), dims, matryoshka_weights=weights)
    tl = None if labels is None else torch.tensor(labels)
    jl = None if labels is None else jnp.asarray(labels)

    def reference_fn(leaves):
        stub.outputs = leaves
        return reference(_features(n), tl)

    assert_parity(reference_fn, lambda e: ours(e, jl), columns(52, n))


@pytest.mark.parametrize("inner", ["mnrl", "cosent"])
def test_matryoshka_n_dims_per_step(monkeypatch, inner):
    ref_inner, our_inner, n, labels = INNER[inner]
    stub = StubModel()
    dims, weights = [16, 8, 4, 2], [1.0, 0.8, 0.6, 0.4]
    reference = ref.MatryoshkaLoss(stub, ref_inner(stub), dims, matryoshka_weights=weights, n_dims_per_step=2)
    ours = L.MatryoshkaLoss(None, our_inner(), dims, matryoshka_weights=weights, n_dims_per_step=2)
    monkeypatch.setattr(random, "sample", lambda population, k: [3, 1][:k])  # the reference's draw
    tl = None if labels is None else torch.tensor(labels)
    jl = None if labels is None else jnp.asarray(labels)

    def reference_fn(leaves):
        stub.outputs = leaves
        return reference(_features(n), tl)

    assert_parity(reference_fn, lambda e: ours(e, jl, dim_indices=(1, 3)), columns(53, n))


def test_matryoshka_key_is_a_traced_choice():
    """With a key, each step draws n_dims_per_step distinct dims under jit (lax.switch over the
    static sizes) and equals the explicit-indices computation for the same draw."""
    ours = L.MatryoshkaLoss(None, L.CosineSimilarityLoss(None), [16, 8, 4], n_dims_per_step=2)
    assert ours.needs_key
    emb = [jnp.asarray(a) for a in columns(54, 2)]
    labels = jnp.asarray(_pair_labels())
    key = jax.random.key(3)
    chosen = [int(i) for i in L.matryoshka.sample_indices(key, 3, 2)]
    assert len(set(chosen)) == 2
    @jax.jit
    def both(e, k):
        return (jax.value_and_grad(lambda e: ours(e, labels, key=k))(e),
                jax.value_and_grad(lambda e: ours(e, labels, dim_indices=chosen))(e))

    (value, grads), (value_ref, grads_ref) = both(emb, key)
    np.testing.assert_allclose(value, value_ref, rtol=1e-6, atol=1e-6)
    for g, gr in zip(grads, grads_ref):
        np.testing.assert_allclose(g, gr, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="key"):
        ours(emb, labels)
    full = L.MatryoshkaLoss(None, L.CosineSimilarityLoss(None), [16, 8])
    assert not full.needs_key
    np.testing.assert_allclose(full(emb, labels), full(emb, labels, dim_indices=(0, 1)), rtol=1e-6)


def _layer_arrays(seed, n):
    return [columns(seed + layer, n) for layer in range(LAYERS)]


def _run_reference_layerwise(monkeypatch, model, reference, n, labels):
    """Reference forward with the Transformer module replaced by one that serves our per-layer
    embeddings ([B, 1, D] tokens with an all-ones mask, so mean pooling returns them exactly)."""

    def reference_fn(flat_leaves):
        leaves = [flat_leaves[layer * n:(layer + 1) * n] for layer in range(LAYERS)]

        def transformer_forward(features):
            c = features["col"]
            features["token_embeddings"] = leaves[-1][c][:, None, :]
            features["all_layer_embeddings"] = [leaves[layer][c][:, None, :] for layer in range(LAYERS)]
            return features

        monkeypatch.setattr(model[0], "forward", transformer_forward)
        feats = [{"col": c, "attention_mask": torch.ones((B, 1), dtype=torch.long),
                  "input_ids": torch.zeros((B, 1), dtype=torch.long)} for c in range(n)]
        return reference(feats, labels)

    return reference_fn


ADAPTIVE_CASES = [
    # inner, kwargs, reference's layer draw (None = all prior layers, no draw)
    ("cosent", dict(n_layers_per_step=1, layer_weighting="log", kl_temperature=0.5, last_layer_weight=0.7,
                    prior_layers_weight=1.3, kl_div_weight=2.0), [1]),
    ("mnrl", dict(n_layers_per_step=-1, layer_weighting="linear", kl_temperature=0.0), None),
]


@pytest.mark.parametrize("inner,kwargs,draw", ADAPTIVE_CASES)
def test_adaptive_layer(monkeypatch, tiny_st, inner, kwargs, draw):
    ref_inner, our_inner, n, labels = INNER[inner]
    reference = ref.AdaptiveLayerLoss(tiny_st, ref_inner(tiny_st), **kwargs)
    ours = L.AdaptiveLayerLoss(None, our_inner(), **kwargs)
    if draw is not None:
        monkeypatch.setattr(random, "sample", lambda population, k: draw[:k])
    tl = None if labels is None else torch.tensor(labels)
    jl = None if labels is None else jnp.asarray(labels)
    arrays = [a for layer in _layer_arrays(60, n) for a in layer]

    def ours_fn(flat):
        layers = [flat[layer * n:(layer + 1) * n] for layer in range(LAYERS)]
        return ours(layers, jl, layer_indices=draw)

    assert_parity(_run_reference_layerwise(monkeypatch, tiny_st, reference, n, tl), ours_fn, arrays)


def test_matryoshka_2d(monkeypatch, tiny_st):
    reference = ref.Matryoshka2dLoss(tiny_st, ref.MultipleNegativesRankingLoss(tiny_st), [16, 8, 4],
                                     matryoshka_weights=[1.0, 0.5, 0.25])
    ours = L.Matryoshka2dLoss(None, L.MultipleNegativesRankingLoss(None), [16, 8, 4],
                              matryoshka_weights=[1.0, 0.5, 0.25])
    # Population 3 = the prior layers and also the dims; the reference draws layers once and dims
    # once per layer call, each time getting this list.
    monkeypatch.setattr(random, "sample", lambda population, k: [2, 0, 1][:k])
    arrays = [a for layer in _layer_arrays(70, 2) for a in layer]

    def ours_fn(flat):
        layers = [flat[layer * 2:(layer + 1) * 2] for layer in range(LAYERS)]
        return ours(layers, None, layer_indices=[2], dim_indices=[2])

    assert_parity(_run_reference_layerwise(monkeypatch, tiny_st, reference, 2, None), ours_fn, arrays)


def test_matryoshka_2d_key(monkeypatch, tiny_st):
    """The keyed Matryoshka2dLoss(CoSENTLoss) (jitted, traced draws: 2 of the 3 prior layers, then 1 of the 3
    dims for each of the 3 wrapped-loss calls, final layer first) against the reference given the same draws,
    recorded from the jitted run and replayed to the reference's random.sample in its call order."""
    kwargs = dict(matryoshka_weights=[1.0, 0.6, 0.3], n_layers_per_step=2, n_dims_per_step=1, kl_temperature=0.5,
                  layer_weighting="log")
    reference = ref.Matryoshka2dLoss(tiny_st, ref.CoSENTLoss(tiny_st), [8, 16, 4], **kwargs)
    ours = L.Matryoshka2dLoss(None, L.CoSENTLoss(None), [8, 16, 4], **kwargs)
    assert ours.needs_key
    labels = _pair_labels()
    key = jax.random.key(8)  # draws layers [2, 1], dims [2], [0], [0]
    kinds, draws = [], {}  # in trace order: which sampler; slot -> the draw, written when the jitted code runs

    def recorder(kind, sample_indices):
        def record(k, population, size):
            chosen, slot = sample_indices(k, population, size), len(kinds)
            kinds.append(kind)
            jax.debug.callback(lambda c: draws.__setitem__(slot, [int(i) for i in c]), chosen)
            return chosen
        return record

    monkeypatch.setattr(L.adaptive_layer, "sample_indices", recorder("layers", L.adaptive_layer.sample_indices))
    monkeypatch.setattr(L.matryoshka, "sample_indices", recorder("dims", L.matryoshka.sample_indices))
    # The reference draws the final layer's dims, then the layers, then each layer's dims.
    replay = iter([1, 0, 2, 3])
    monkeypatch.setattr(random, "sample", lambda population, k: list(draws[next(replay)]))

    def ours_fn(flat):
        return ours([flat[layer * 2:(layer + 1) * 2] for layer in range(LAYERS)], jnp.asarray(labels), key=key)

    arrays = [a for layer in _layer_arrays(90, 2) for a in layer]
    assert_parity(_run_reference_layerwise(monkeypatch, tiny_st, reference, 2, torch.tensor(labels)), ours_fn, arrays)
    assert kinds == ["layers", "dims", "dims", "dims"] and len(draws) == 4
    assert len({tuple(draws[s]) for s in (1, 2, 3)}) > 1  # each wrapped-loss call draws its own dims


def test_layerwise_key_paths():
    """With a key the layer draws are traced under jit; the result equals the explicit-indices computation for
    the same draws (Matryoshka2dLoss's keyed path: test_matryoshka_2d_key)."""
    layers = [[jnp.asarray(a) for a in row] for row in _layer_arrays(80, 2)]
    labels = jnp.asarray(_pair_labels())
    adaptive = L.AdaptiveLayerLoss(None, L.CosineSimilarityLoss(None), n_layers_per_step=2)
    key = jax.random.key(7)
    layer_key, _ = jax.random.split(key)
    chosen = [int(i) for i in L.matryoshka.sample_indices(layer_key, LAYERS - 1, 2)]
    value = jax.jit(lambda e, k: adaptive(e, labels, key=k))(layers, key)
    np.testing.assert_allclose(value, adaptive(layers, labels, layer_indices=chosen), rtol=1e-6)
