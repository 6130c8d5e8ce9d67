"""Padded rows: the trainer pads a partial batch to the static batch size and passes ``mask``.

For every loss, the loss on the padded batch with ``mask`` equals the loss on the real rows alone
(sentence-transformers 6.2 on those rows where it has ``compute_loss_from_embeddings``, else our
own function on those rows), the real rows' gradients agree, and padded rows get zero gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer import losses as ref

import stcore_jax.losses as L
from losses_reference import columns, randn, torch_value_and_grads

B = 8
PAD = np.array([2, 7])  # padded positions, filled with garbage
REAL = np.setdiff1d(np.arange(B), PAD)
MASK = jnp.asarray(np.isin(np.arange(B), REAL))

CLASS = np.array([0, 1, 0, 1, 2, 2, 0, 1])
FLOAT = np.random.default_rng(0).random(B).astype(np.float32)
BINARY = np.array([1, 0, 1, 1, 0, 0, 1, 0])
TEACHER = randn(202, B, 16)
MARGINS = randn(203, B, 2)
SCORES = randn(204, B, 2)
ALL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
SOFTMAX = L.SoftmaxLoss(None, 16, 3)
CTIBN = L.ContrastiveTensionLossInBatchNegatives(None)
GUIDE = columns(201, 3)


def _real(x):
    return None if x is None else np.asarray(x)[REAL]


def _ref(loss, labels=None):
    """Reference ``compute_loss_from_embeddings`` on the real rows."""
    return lambda e: loss.compute_loss_from_embeddings(e, None if labels is None else torch.tensor(_real(labels)))


# name: (ours, number of columns, labels, context, reference on the real rows or None)
CASES = {
    "mnrl": (L.MultipleNegativesRankingLoss(None, directions=ALL_DIRECTIONS, hardness_mode="all_negatives",
                                            hardness_strength=2.0), 3, None, {},
             _ref(ref.MultipleNegativesRankingLoss(None, directions=ALL_DIRECTIONS, hardness_mode="all_negatives",
                                                   hardness_strength=2.0))),
    "mnrl_per_direction": (L.MultipleNegativesRankingLoss(None, directions=("query_to_doc", "doc_to_query"),
                                                          partition_mode="per_direction"), 2, None, {},
                           _ref(ref.MultipleNegativesRankingLoss(None, directions=("query_to_doc", "doc_to_query"),
                                                                 partition_mode="per_direction"))),
    "cosent": (L.CoSENTLoss(None), 2, FLOAT, {}, _ref(ref.CoSENTLoss(None), FLOAT)),
    "angle_tuples": (L.AnglELoss(None), 3, None, {}, _ref(ref.AnglELoss(None))),
    "contrastive_sum": (L.ContrastiveLoss(None, size_average=False), 2, BINARY, {},
                        _ref(ref.ContrastiveLoss(None, size_average=False), BINARY)),
    "online_contrastive": (L.OnlineContrastiveLoss(None, margin=0.9), 2, BINARY, {},
                           _ref(ref.OnlineContrastiveLoss(None, margin=0.9), BINARY)),
    "batch_all": (L.BatchAllTripletLoss(None), 1, CLASS, {}, _ref(ref.BatchAllTripletLoss(None), CLASS)),
    "batch_hard": (L.BatchHardTripletLoss(None), 1, CLASS, {}, _ref(ref.BatchHardTripletLoss(None), CLASS)),
    "batch_semi_hard": (L.BatchSemiHardTripletLoss(None, margin=2.0), 1, CLASS, {},
                        _ref(ref.BatchSemiHardTripletLoss(None, margin=2.0), CLASS)),
    "mse": (L.MSELoss(None), 2, TEACHER, {},
            lambda e: ref.MSELoss(None).compute_loss_from_embeddings(e, [torch.tensor(_real(TEACHER))] * 2)),
    "margin_mse": (L.MarginMSELoss(None), 3, MARGINS[:, 0], {}, _ref(ref.MarginMSELoss(None), MARGINS[:, 0])),
    "distill_kl": (L.DistillKLDivLoss(None), 3, SCORES, {}, _ref(ref.DistillKLDivLoss(None), SCORES)),
    "mega_batch": (L.MegaBatchMarginLoss(None), 2, None, {},
                   lambda e: ref.MegaBatchMarginLoss(None, use_mini_batched_version=False).calculate_loss(
                       [[t] for t in e])),
    "gor": (lambda e, y, **k: sum(L.GlobalOrthogonalRegularizationLoss(None)(e, y, **k).values()), 2, None, {},
            lambda e: sum(ref.GlobalOrthogonalRegularizationLoss(None).compute_loss_from_embeddings(e).values())),
    # No reference compute_loss_from_embeddings: compare with our own loss on the real rows.
    "gist": (L.GISTEmbedLoss(None, guide=object(), temperature=0.05), 3, None, {"guide_embeddings": GUIDE}, None),
    "softmax": (SOFTMAX, 2, CLASS, {"params": SOFTMAX.init_params(jax.random.key(0))}, None),
    "contrastive_tension": (CTIBN, 2, None, {"params": CTIBN.init_params(None)}, None),
    "matryoshka": (L.MatryoshkaLoss(None, L.MultipleNegativesRankingLoss(None), [16, 4]), 2, None, {}, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_mask_equals_dropping_padded_rows(name):
    loss, n, labels, context, reference = CASES[name]
    arrays = columns(200, n)
    real_arrays = [a[REAL] for a in arrays]
    real_context = {k: ([g[REAL] for g in v] if k == "guide_embeddings" else v) for k, v in context.items()}

    def both(padded, real):  # one compilation for the padded and (if needed) the real-rows loss
        masked = jax.value_and_grad(lambda e: loss(e, labels, mask=MASK, **context))(padded)
        if reference is not None:
            return masked, None
        return masked, jax.value_and_grad(lambda e: loss(e, _real(labels), **real_context))(real)

    (value, grads), own = jax.jit(both)([jnp.asarray(a) for a in arrays], [jnp.asarray(a) for a in real_arrays])
    real_value, real_grads = own if reference is None else torch_value_and_grads(reference, real_arrays)
    np.testing.assert_allclose(value, real_value, rtol=1e-5, atol=1e-5)
    for g, rg in zip(grads, real_grads):
        np.testing.assert_allclose(np.asarray(g)[REAL], rg, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(g)[PAD], 0.0)


def test_adaptive_layer_mask():
    loss = L.AdaptiveLayerLoss(None, L.CoSENTLoss(None), n_layers_per_step=-1)
    layers = [[jnp.asarray(a) for a in columns(210 + layer, 2)] for layer in range(3)]

    @jax.jit
    def both(layers):
        return (loss(layers, FLOAT, mask=MASK),
                loss([[e[REAL] for e in row] for row in layers], FLOAT[REAL]))

    value, real = both(layers)
    np.testing.assert_allclose(value, real, rtol=1e-5)


def test_l2_distill_gradient_is_finite_on_zero_padded_rows():
    """A padded row embeds to 0 and its teacher label is 0: a plain norm's gradient there is 0/0 = NaN,
    which would make the trainer skip the whole step."""
    from stcore_jax.sentence_transformer.losses.distill import embed_distill_loss

    student = jnp.asarray(np.where(np.asarray(MASK)[:, None], randn(210, B, 16), 0.0), jnp.float32)
    teacher = jnp.asarray(np.where(np.asarray(MASK)[:, None], randn(211, B, 16), 0.0), jnp.float32)
    value, grad = jax.value_and_grad(lambda s: embed_distill_loss([s], teacher, distance_metric="l2", mask=MASK))(student)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_array_equal(np.asarray(grad)[PAD], 0.0)
    real = np.linalg.norm(np.asarray(student - teacher)[REAL], axis=-1).mean()
    np.testing.assert_allclose(float(value), real, rtol=1e-6)
