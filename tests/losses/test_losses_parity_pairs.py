"""Parity with sentence-transformers 6.2 for pair / triplet losses: values and gradients w.r.t.
the embeddings (float32, within 1e-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer import losses as ref
from sentence_transformers.sentence_transformer.losses import softmax as ref_softmax
from sentence_transformers.util import pairwise_dot_score as torch_pairwise_dot

import stcore_jax.losses as L
from losses_reference import assert_parity, columns, patch_embed_columns

B = 8


def _labels(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "float":
        return rng.random(B).astype(np.float32)
    if kind == "ties":  # several equal labels: tie groups must not contribute pairs
        return np.array([0.2, 0.5, 0.2, 1.0, 0.5, 0.0, 1.0, 0.2], np.float32)
    if kind == "bool":
        return np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    return np.array([1, 0, 1, 1, 0, 0, 1, 0], np.int64)  # binary


@pytest.mark.parametrize("kind", ["float", "ties", "bool"])
def test_cosent(kind):
    labels = _labels(kind)
    reference, ours = ref.CoSENTLoss(None), L.CoSENTLoss(None)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(10, 2))


def test_cosent_dot_similarity():
    labels = _labels("float", 1)
    reference = ref.CoSENTLoss(None, scale=1.0, similarity_fct=torch_pairwise_dot)
    ours = L.CoSENTLoss(None, scale=1.0, similarity_fct="pairwise_dot_score")
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(11, 2))


@pytest.mark.parametrize("num_columns,with_labels,dim", [(2, True, 16), (2, True, 7), (3, False, 16), (3, True, 16)])
def test_angle(num_columns, with_labels, dim):
    labels = _labels("ties") if num_columns == 2 else _labels("binary").astype(np.float32)
    reference, ours = ref.AnglELoss(None), L.AnglELoss(None)
    tl = torch.tensor(labels) if with_labels else None
    jl = jnp.asarray(labels) if with_labels else None
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, tl), lambda e: ours(e, jl),
                  columns(12, num_columns, dim=dim))


def test_cosine_similarity():
    labels = _labels("float", 2)
    reference, ours = ref.CosineSimilarityLoss(None), L.CosineSimilarityLoss(None)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(13, 2))


def test_cosine_similarity_l1():
    labels = _labels("float", 3)
    reference = ref.CosineSimilarityLoss(None, loss_fct=torch.nn.L1Loss())
    ours = L.CosineSimilarityLoss(None, loss_fct="l1")
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(14, 2))


@pytest.mark.parametrize("concat,soft_labels", [((True, True, False), False), ((True, False, True), True),
                                                 ((False, True, True), False)])
def test_softmax(monkeypatch, tiny_st, concat, soft_labels):
    # The reference SoftmaxLoss has no compute_loss_from_embeddings: run its forward with
    # embed_columns patched to return our embeddings. Its classifier weights become our params,
    # and the classifier gradients are compared too.
    num_labels = 3
    reference = ref.SoftmaxLoss(tiny_st, embedding_dimension=16, num_labels=num_labels,
                                concatenation_sent_rep=concat[0], concatenation_sent_difference=concat[1],
                                concatenation_sent_multiplication=concat[2])
    ours = L.SoftmaxLoss(tiny_st, sentence_embedding_dimension=16, num_labels=num_labels,
                         concatenation_sent_rep=concat[0], concatenation_sent_difference=concat[1],
                         concatenation_sent_multiplication=concat[2])
    rng = np.random.default_rng(4)
    if soft_labels:
        labels = rng.random((B, num_labels)).astype(np.float32)
        labels /= labels.sum(1, keepdims=True)
    else:
        labels = rng.integers(0, num_labels, B)
    weight = reference.classifier.weight.detach().numpy().copy()
    bias = reference.classifier.bias.detach().numpy().copy()
    arrays = columns(15, 2) + [weight.T.copy(), bias]

    def reference_fn(leaves):
        reference.classifier.weight = torch.nn.Parameter(leaves[2].detach().T.contiguous())
        reference.classifier.bias = torch.nn.Parameter(leaves[3].detach().clone())
        patch_embed_columns(monkeypatch, ref_softmax, {id(tiny_st): leaves[:2]})
        loss = reference([{}, {}], torch.tensor(labels))
        loss.backward(retain_graph=True)
        leaves[2].grad = reference.classifier.weight.grad.T.clone()
        leaves[3].grad = reference.classifier.bias.grad.clone()
        return loss.detach().requires_grad_()  # gradients are already in place

    def ours_fn(e):
        params = {"classifier": {"kernel": e[2], "bias": e[3]}}
        return ours(e[:2], jnp.asarray(labels), params=params)

    assert_parity(reference_fn, ours_fn, arrays)
    assert jax.tree.map(jnp.shape, ours.init_params(jax.random.key(0))) == {
        "classifier": {"kernel": (ours.num_vectors * 16, num_labels), "bias": (num_labels,)}}


def test_softmax_embedding_dimension_alias():
    loss = L.SoftmaxLoss(None, embedding_dimension=8, num_labels=2)
    assert loss.sentence_embedding_dimension == 8
    with pytest.raises(ValueError, match="sentence_embedding_dimension"):
        L.SoftmaxLoss(None, num_labels=2)


@pytest.mark.parametrize("metric,size_average", [("EUCLIDEAN", True), ("MANHATTAN", False),
                                                 ("COSINE_DISTANCE", True)])
def test_contrastive(metric, size_average):
    labels = _labels("binary")
    margin = {"EUCLIDEAN": 6.0, "MANHATTAN": 20.0, "COSINE_DISTANCE": 0.9}[metric]
    reference = ref.ContrastiveLoss(None, distance_metric=getattr(ref.SiameseDistanceMetric, metric),
                                    margin=margin, size_average=size_average)
    ours = L.ContrastiveLoss(None, distance_metric=getattr(L.SiameseDistanceMetric, metric), margin=margin,
                             size_average=size_average)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(16, 2))


@pytest.mark.parametrize("metric,labels", [
    ("EUCLIDEAN", np.array([1, 0, 1, 1, 0, 0, 1, 0])),
    ("COSINE_DISTANCE", np.array([1, 0, 1, 1, 0, 0, 1, 0])),
    ("COSINE_DISTANCE", np.array([0, 0, 0, 0, 0, 0, 0, 0])),  # no positives: threshold = mean negative
    ("EUCLIDEAN", np.array([1, 1, 1, 1, 1, 1, 1, 1])),  # no negatives: threshold = mean positive
])
def test_online_contrastive(metric, labels):
    margin = {"EUCLIDEAN": 6.0, "COSINE_DISTANCE": 0.9}[metric]
    reference = ref.OnlineContrastiveLoss(None, distance_metric=getattr(ref.SiameseDistanceMetric, metric),
                                          margin=margin)
    ours = L.OnlineContrastiveLoss(None, distance_metric=metric, margin=margin)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(17, 2))


@pytest.mark.parametrize("metric,margin", [("EUCLIDEAN", 5.0), ("MANHATTAN", 12.0), ("COSINE", 0.5)])
def test_triplet(metric, margin):
    reference = ref.TripletLoss(None, distance_metric=getattr(ref.TripletDistanceMetric, metric),
                                triplet_margin=margin)
    ours = L.TripletLoss(None, distance_metric=getattr(L.TripletDistanceMetric, metric), triplet_margin=margin)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, None), lambda e: ours(e, None),
                  columns(18, 3))
