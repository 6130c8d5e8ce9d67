"""What each loss declares (``loss.inputs``), what wrappers derive from the loss they wrap, the checks of
``validate_loss`` for combinations that cannot train, and the per-layer dispatch of ``compute_loss``.

The per-layer dispatch runs on our tiny BERT with dropout on: one forward over the stacked columns with the
per-row dropout keys must give the loss and gradient of separate per-column forwards (``row_keys``), as
``embed_columns`` does for last-layer embeddings. Parity of the trained result with sentence-transformers'
trainer: tests/training/test_reference_trainer_parity.py (``adaptive_layer``, ``matryoshka_2d``).
"""

import enum
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stcore_jax.losses as L
from stcore_jax import SentenceTransformer
from stcore_jax.base.loss import InputKind, LossInputs
from stcore_jax.models import Normalize, Router
from stcore_jax.sentence_transformer.data import check_label_range
from stcore_jax.sentence_transformer.losses.embed import compute_loss, row_keys, supports_packing, validate_loss

GUIDE = object()
LAYERS, PLAIN = InputKind.LAYER_EMBEDDINGS, InputKind.EMBEDDINGS

# factory -> (kind, mini_batch_size, guide, needs_key, label range of (None: none), owns_params)
DECLARED = {
    "mnrl": (lambda: L.MultipleNegativesRankingLoss(None), (PLAIN, None, None, False, None, False)),
    "cosine": (lambda: L.CosineSimilarityLoss(None), (PLAIN, None, None, False, "CosineSimilarityLoss", False)),
    "cosine-transformed": (lambda: L.CosineSimilarityLoss(None, cos_score_transformation=jnp.tanh),
                           (PLAIN, None, None, False, None, False)),
    "softmax": (lambda: L.SoftmaxLoss(None, 8, 3), (PLAIN, None, None, False, "SoftmaxLoss", True)),
    "softmax-own-fct": (lambda: L.SoftmaxLoss(None, 8, 3, loss_fct=lambda x, y: x.sum()),
                        (PLAIN, None, None, False, None, True)),
    "contrastive": (lambda: L.ContrastiveLoss(None), (PLAIN, None, None, False, "ContrastiveLoss", False)),
    "online-contrastive": (lambda: L.OnlineContrastiveLoss(None),
                           (PLAIN, None, None, False, "OnlineContrastiveLoss", False)),
    "mse": (lambda: L.MSELoss(None), (PLAIN, None, None, False, None, False)),
    "mse-projected": (lambda: L.MSELoss(None, 4, embedding_dimension=8), (PLAIN, None, None, False, None, True)),
    "tension": (lambda: L.ContrastiveTensionLossInBatchNegatives(None), (PLAIN, None, None, False, None, True)),
    "mega-batch": (lambda: L.MegaBatchMarginLoss(None), (PLAIN, None, None, False, None, False)),  # not GradCache
    "gist": (lambda: L.GISTEmbedLoss(None, GUIDE), (PLAIN, None, GUIDE, False, None, False)),
    "cached-mnrl": (lambda: L.CachedMultipleNegativesRankingLoss(None, mini_batch_size=4),
                    (PLAIN, 4, None, False, None, False)),
    "cached-gist": (lambda: L.CachedGISTEmbedLoss(None, GUIDE, mini_batch_size=2),
                    (PLAIN, 2, GUIDE, False, None, False)),
    # wrappers: the wrapped loss's declaration, changed where the wrapper needs it
    "matryoshka-cached-gist": (lambda: L.MatryoshkaLoss(None, L.CachedGISTEmbedLoss(None, GUIDE, mini_batch_size=2),
                                                        [8, 4], n_dims_per_step=1),
                               (PLAIN, 2, GUIDE, True, None, False)),
    "matryoshka-cosine": (lambda: L.MatryoshkaLoss(None, L.CosineSimilarityLoss(None), [8, 4]),
                          (PLAIN, None, None, False, "CosineSimilarityLoss", False)),
    "matryoshka-softmax": (lambda: L.MatryoshkaLoss(None, L.SoftmaxLoss(None, 8, 3), [8]),
                           (PLAIN, None, None, False, "SoftmaxLoss", True)),
    "adaptive-all-layers": (lambda: L.AdaptiveLayerLoss(None, L.CoSENTLoss(None), n_layers_per_step=-1),
                            (LAYERS, None, None, False, None, False)),
    "adaptive-sampled": (lambda: L.AdaptiveLayerLoss(None, L.OnlineContrastiveLoss(None)),
                         (LAYERS, None, None, True, "OnlineContrastiveLoss", False)),
    "adaptive-gist": (lambda: L.AdaptiveLayerLoss(None, L.GISTEmbedLoss(None, GUIDE), n_layers_per_step=-1),
                      (LAYERS, None, GUIDE, False, None, False)),
    "2d-all": (lambda: L.Matryoshka2dLoss(None, L.MultipleNegativesRankingLoss(None), [8, 4], n_layers_per_step=-1,
                                          n_dims_per_step=-1), (LAYERS, None, None, False, None, False)),
    "2d-sampled-dims": (lambda: L.Matryoshka2dLoss(None, L.SoftmaxLoss(None, 8, 3), [8, 4], n_layers_per_step=-1),
                        (LAYERS, None, None, True, "SoftmaxLoss", True)),
}


@pytest.mark.parametrize("name", list(DECLARED))
def test_declarations(name):
    factory, (kind, size, guide, key, label_range, owns) = DECLARED[name]
    loss = factory()
    spec = loss.inputs
    assert isinstance(spec, LossInputs)
    assert (spec.kind, spec.mini_batch_size, spec.guide, spec.needs_key, spec.owns_params) == (kind, size, guide, key,
                                                                                               owns)
    assert (spec.label_range and spec.label_range.loss) == label_range
    assert loss.needs_key == key
    assert supports_packing(loss) == (kind is PLAIN and size is None and guide is None)
    if owns:  # a wrapper hands out its wrapped loss's parameters
        assert jax.tree.leaves(loss.init_params(jax.random.key(0)))


def test_wrappers_derive_the_label_range_and_column_checks():
    """The trainer's label-range check reads the declaration, through any wrapper; the column check names both."""
    loss = L.Matryoshka2dLoss(None, L.SoftmaxLoss(None, 8, 3), [8, 4])
    with pytest.raises(ValueError, match=r"row 1: SoftmaxLoss needs integer class ids 0\.\.2 .*got 3"):
        check_label_range(loss, np.array([0, 3, 1]), "train", "label")
    check_label_range(loss, np.array([0, 2, 1]), "train", "label")
    with pytest.raises(ValueError, match=r"^Matryoshka2dLoss wrapping MatryoshkaLoss wrapping SoftmaxLoss expects "
                                         r"exactly 2 input columns .* has 3"):
        loss.validate_columns(3, has_label=True)


def _transformer_model(tiny_st_dir):
    return SentenceTransformer(str(tiny_st_dir))


def test_validate_loss(tiny_st, tiny_st_dir):
    bert = _transformer_model(tiny_st_dir)
    router = types.SimpleNamespace(input_module=Router({"query": [Normalize()], "document": [Normalize()]}))
    adaptive = L.AdaptiveLayerLoss(None, L.MultipleNegativesRankingLoss(None))
    for packing in (None, False):
        validate_loss(adaptive, bert, packing=packing)
    validate_loss(L.MultipleNegativesRankingLoss(None), router, packing=True)  # a last-layer loss: any input module
    with pytest.raises(ValueError, match=r"^sequence_packing=True, but loss AdaptiveLayerLoss of dataset 'nli' embeds "
                                         r"its columns itself \(per-layer embeddings.*sequence_packing=None"):
        validate_loss(adaptive, bert, packing=True, dataset="nli")
    with pytest.raises(ValueError, match=r"GradCache, in mini-batches of 4 rows"):
        validate_loss(L.CachedMultipleNegativesRankingLoss(None, mini_batch_size=4), bert, packing=True)
    with pytest.raises(ValueError, match=r"Matryoshka2dLoss .*must be a Transformer encoder, but it is Router"):
        validate_loss(L.Matryoshka2dLoss(None, L.CoSENTLoss(None), [8]), router)
    with pytest.raises(ValueError, match=r"AdaptiveLayerLoss .*must be a Transformer encoder, but it is Router"):
        L.AdaptiveLayerLoss(router, L.CoSENTLoss(None))  # at construction too, as the reference asserts

    # a combination made after construction is caught too
    matryoshka = L.MatryoshkaLoss(None, L.CoSENTLoss(None), [8])
    matryoshka.loss = L.AdaptiveLayerLoss(None, L.CoSENTLoss(None))
    with pytest.raises(ValueError, match=r"MatryoshkaLoss cannot wrap AdaptiveLayerLoss"):
        validate_loss(matryoshka, bert)
    adaptive.loss = L.CachedMultipleNegativesRankingLoss(None)
    with pytest.raises(ValueError, match=r"AdaptiveLayerLoss cannot wrap CachedMultipleNegativesRankingLoss"):
        validate_loss(adaptive, bert)

    class Future(enum.Enum):  # a kind of another model family (a reranker's scores)
        SCORES = "scores"

    class RerankerLoss(L.Loss):
        inputs = LossInputs(kind=Future.SCORES)

    with pytest.raises(ValueError, match=r"RerankerLoss takes scores, which a SentenceTransformer does not compute"):
        validate_loss(RerankerLoss(None), bert)


def test_per_layer_dispatch_is_one_forward_with_row_keys(tiny_st, tiny_st_dir):
    """AdaptiveLayerLoss through compute_loss, dropout on: one forward over both columns, equal (value and gradient)
    to per-column forwards with each row's own dropout key; the last layer is the sentence embedding; a sampling
    loss in evaluation (no key at all) gets a fixed key."""
    model = _transformer_model(tiny_st_dir)
    texts = [[f"w{i} w{(3 * i) % 20} w{(7 * i) % 20}" for i in range(8)], [f"w{(i + 5) % 20} w{i}" for i in range(8)]]
    feats = [model.input_module.tokenize(t, length=8) for t in texts]
    loss = L.AdaptiveLayerLoss(None, L.MultipleNegativesRankingLoss(None), n_layers_per_step=-1)
    key = jax.random.key(3)
    calls = []

    def forward(p, f, **kw):
        calls.append(kw.get("output_hidden_states"))
        return model.forward(p, f, **kw)

    def per_column(p):
        outs = [model.forward(p, f, dropout_key=row_keys(key, c, jnp.arange(8)), output_hidden_states=True)
                for c, f in enumerate(feats)]
        assert all(o["layer_embeddings"][-1] is o["sentence_embedding"] for o in outs)
        layers = [[o["layer_embeddings"][layer] for o in outs] for layer in range(len(outs[0]["layer_embeddings"]))]
        assert len(layers) == 3  # embedding output + 2 encoder layers
        return loss.compute_loss_from_embeddings(layers, None)

    sampled = L.AdaptiveLayerLoss(None, L.MultipleNegativesRankingLoss(None))  # 1 of the 2 prior layers per call

    def run(p):  # one program (compile time dominates here), its LLVM optimisations off
        return (jax.value_and_grad(lambda p: compute_loss(loss, forward, p, feats, None, dropout_key=key))(p),
                jax.value_and_grad(per_column)(p), compute_loss(loss, model.forward, p, feats, None),
                compute_loss(sampled, model.forward, p, feats, None))

    compiled = jax.jit(run).lower(model.params).compile({"xla_backend_optimization_level": 0})
    (value, grads), (expected, expected_grads), no_dropout, sampled_value = compiled(model.params)
    assert calls == [True]  # one forward, over the stacked columns
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    assert abs(float(no_dropout) - float(value)) > 1e-4  # the keys were used: dropout changed the loss
    assert np.isfinite(float(sampled_value))  # no key and no dropout key (an evaluation step): a fixed key
